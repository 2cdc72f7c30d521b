"""How one component moves through its hosts: batches of drain -> deploy -> verify -> undrain.

A rollout that fails part-way puts back every host it touched before it reports the
component failed, so the saga only ever compensates components that finished. A
rollback (the saga's compensation) walks the batches in reverse and returns each host
to the version it ran before the release.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from orchestrator.contract import Step
from workers.drivers import Driver, StepError

__all__ = ["Reporter", "RollbackResult", "RolloutResult", "roll_back", "roll_out"]

_FORWARD: Final = (Step.DRAIN, Step.DEPLOY, Step.VERIFY, Step.UNDRAIN)

Batch = Sequence[str]


class Reporter(Protocol):
    """Where a strategy tells the world what it is doing (events on the bus)."""

    def step_started(self, step: Step, batch: int, hosts: Batch, rollback: bool) -> None: ...

    def step_succeeded(
        self, step: Step, batch: int, hosts: Batch, rollback: bool, duration_ms: float
    ) -> None: ...

    def step_failed(
        self, step: Step, batch: int, hosts: Batch, rollback: bool, error: StepError
    ) -> None: ...


@dataclass(frozen=True)
class RolloutResult:
    previous_versions: dict[str, str]
    error: StepError | None = None
    restored: bool = True  # after an error: every touched host is back where it was


@dataclass(frozen=True)
class RollbackResult:
    error: StepError | None = None
    hosts_left: tuple[str, ...] = ()  # not (known to be) back on their old version


def roll_out(
    driver: Driver,
    batches: Sequence[Batch],
    version: str,
    report: Reporter,
    *,
    undo: Driver,
) -> RolloutResult:
    """Move every host to ``version``; on failure, put back what was touched with ``undo``.

    ``undo`` is the same kind of driver for the same hosts, told that what it does is a
    rollback, so that the two are never mistaken for each other (e.g. in effect counts).
    """
    previous = {host: driver.current_version(host) for batch in batches for host in batch}
    done: dict[str, list[Step]] = {}
    for number, batch in enumerate(batches, start=1):
        for step in _FORWARD:
            error = _step(
                driver,
                step,
                number,
                batch,
                versions=dict.fromkeys(batch, version),
                report=report,
                done=done,
            )
            if error is not None:
                put_back = _put_back(undo, batches, previous, done, report)
                return RolloutResult(previous, error, restored=put_back.error is None)
    return RolloutResult(previous)


def roll_back(
    driver: Driver, batches: Sequence[Batch], to_versions: Mapping[str, str], report: Reporter
) -> RollbackResult:
    """Return every host named in ``to_versions`` to its version, last batch first."""
    deployed = {host: list(_FORWARD) for batch in batches for host in batch if host in to_versions}
    return _put_back(driver, batches, to_versions, deployed, report)


def _put_back(
    driver: Driver,
    batches: Sequence[Batch],
    versions: Mapping[str, str],
    done: Mapping[str, Sequence[Step]],
    report: Reporter,
) -> RollbackResult:
    """Undo what ``done`` says happened to each host, batch by batch in reverse.

    Batches keep the numbers they had on the way out, so a timeline reads "rollback of
    batch 2" for the hosts that were batch 2.
    """
    remaining = [h for batch in batches for h in batch if _undo_steps(done.get(h, ()))]
    for number, batch in reversed(list(enumerate(batches, start=1))):
        restored: dict[str, list[Step]] = {}
        for step in _FORWARD:
            hosts = [h for h in batch if step in _undo_steps(done.get(h, ()))]
            if not hosts:
                continue
            error = _step(
                driver,
                step,
                number,
                hosts,
                versions=versions,
                report=report,
                done=restored,
                rollback=True,
            )
            if error is not None:
                return RollbackResult(error, tuple(remaining))
        remaining = [h for h in remaining if h not in batch]
    return RollbackResult()


def _undo_steps(done: Sequence[Step]) -> set[Step]:
    """What a host needs to be back on its old version and serving traffic."""
    drained = Step.DRAIN in done and Step.UNDRAIN not in done
    if Step.DEPLOY in done:
        return {Step.DEPLOY, Step.VERIFY, Step.UNDRAIN} | (set() if drained else {Step.DRAIN})
    return {Step.UNDRAIN} if drained else set()


def _step(
    driver: Driver,
    step: Step,
    batch_number: int,
    hosts: Batch,
    *,
    versions: Mapping[str, str],
    report: Reporter,
    done: dict[str, list[Step]],
    rollback: bool = False,
) -> StepError | None:
    """Run one step on every host of a batch; stop at the first host that fails."""
    report.step_started(step, batch_number, hosts, rollback)
    started = time.monotonic()
    for host in hosts:
        try:
            _apply(driver, step, host, versions[host])
        except StepError as error:
            report.step_failed(step, batch_number, hosts, rollback, error)
            return error
        done.setdefault(host, []).append(step)
    elapsed_ms = (time.monotonic() - started) * 1000
    report.step_succeeded(step, batch_number, hosts, rollback, elapsed_ms)
    return None


def _apply(driver: Driver, step: Step, host: str, version: str) -> None:
    match step:
        case Step.DRAIN:
            driver.drain(host)
        case Step.DEPLOY:
            driver.deploy(host, version)
        case Step.VERIFY:
            driver.verify(host, version)
        case Step.UNDRAIN:
            driver.undrain(host)
