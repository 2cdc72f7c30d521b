"""How one component moves through its hosts: batches of drain -> deploy -> verify -> undrain.

A rollout that fails (or is aborted) part-way puts back every host it touched before it
reports the component failed, so the saga only compensates components that finished. A
rollback (the saga's compensation) walks the batches in reverse and returns each host to
the version it ran before the release.

Every step done on a host is written to a journal as soon as it is done. A worker that
takes over a component from a dead one reads the journal and carries on where it
stopped: a step in the journal is never done again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from orchestrator.contract import Step
from workers.drivers import Driver, StepError

__all__ = [
    "Journal",
    "Reporter",
    "RollbackResult",
    "RolloutResult",
    "Run",
    "roll_back",
    "roll_out",
]

_FORWARD: Final = (Step.DRAIN, Step.DEPLOY, Step.VERIFY, Step.UNDRAIN)
_ROLLBACK_ATTEMPTS: Final = 3  # a step of a rollback is tried this often before giving up
_ROLLBACK_BACKOFF_S: Final = 0.2  # doubled after each failed attempt

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


class Journal(Protocol):
    """Which steps are done on which host, kept where a successor can read it."""

    def done(self, host: str) -> Sequence[Step]: ...

    def mark(self, host: str, step: Step) -> None: ...


@dataclass(frozen=True)
class Run:
    """What a strategy needs besides the hosts: where to report, remember and look up."""

    report: Reporter
    journal: Journal  # the steps of this command
    undo_journal: Journal  # the steps of putting this command's hosts back
    # Asked between batches: a reason to stop (the release was aborted), or None.
    should_stop: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class RolloutResult:
    failure: str | None = None  # why it did not finish: a step failed, or an abort
    restored: bool = True  # after a failure: every touched host is back where it was


@dataclass(frozen=True)
class RollbackResult:
    error: StepError | None = None
    hosts_left: tuple[str, ...] = ()  # not (known to be) back on their old version


def roll_out(
    driver: Driver,
    batches: Sequence[Batch],
    version: str,
    previous: Mapping[str, str],
    run: Run,
    *,
    undo: Driver,
) -> RolloutResult:
    """Move every host to ``version``; on failure put back what was touched, with ``undo``.

    ``undo`` is the same kind of driver for the same hosts, told that what it does is a
    rollback, so that the two are never mistaken for each other (e.g. in effect counts).
    """
    for number, batch in enumerate(batches, start=1):
        failure = run.should_stop() if number > 1 else None
        for step in _FORWARD:
            if failure is not None:
                break
            versions = dict.fromkeys(batch, version)
            error = _step(
                driver,
                step,
                number,
                batch,
                versions=versions,
                report=run.report,
                journal=run.journal,
            )
            failure = str(error) if error else None
        if failure is not None:
            done = {h: run.journal.done(h) for b in batches for h in b}
            put_back = _put_back(undo, batches, previous, done, run)
            return RolloutResult(failure, restored=put_back.error is None)
    return RolloutResult()


def roll_back(
    driver: Driver, batches: Sequence[Batch], to_versions: Mapping[str, str], run: Run
) -> RollbackResult:
    """Return every host named in ``to_versions`` to its version, last batch first."""
    deployed = {host: _FORWARD for batch in batches for host in batch if host in to_versions}
    return _put_back(driver, batches, to_versions, deployed, run)


def _put_back(
    driver: Driver,
    batches: Sequence[Batch],
    versions: Mapping[str, str],
    done: Mapping[str, Sequence[Step]],
    run: Run,
) -> RollbackResult:
    """Undo what ``done`` says happened to each host, batch by batch in reverse.

    Batches keep the numbers they had on the way out, so a timeline reads "rollback of
    batch 2" for the hosts that were batch 2.
    """
    remaining = [h for batch in batches for h in batch if _undo_steps(done.get(h, ()))]
    for number, batch in reversed(list(enumerate(batches, start=1))):
        for step in _FORWARD:
            hosts = [h for h in batch if step in _undo_steps(done.get(h, ()))]
            if not hosts:
                continue
            error = _retried(driver, step, number, hosts, versions=versions, run=run)
            if error is not None:
                return RollbackResult(error, tuple(remaining))
        remaining = [h for h in remaining if h not in batch]
    return RollbackResult()


def _retried(
    driver: Driver,
    step: Step,
    number: int,
    hosts: Batch,
    *,
    versions: Mapping[str, str],
    run: Run,
) -> StepError | None:
    """A rollback step, tried again with backoff: undoing is worth more patience."""
    error: StepError | None = None
    for attempt in range(_ROLLBACK_ATTEMPTS):
        if attempt:
            time.sleep(_ROLLBACK_BACKOFF_S * 2 ** (attempt - 1))
        error = _step(
            driver,
            step,
            number,
            hosts,
            versions=versions,
            report=run.report,
            journal=run.undo_journal,
            rollback=True,
        )
        if error is None:
            return None
    return error


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
    journal: Journal,
    rollback: bool = False,
) -> StepError | None:
    """Run one step on the hosts of a batch that have not done it; stop at the first failure."""
    todo = [host for host in hosts if step not in journal.done(host)]
    if not todo:
        return None  # done before a takeover: nothing to do, nothing to report again
    report.step_started(step, batch_number, hosts, rollback)
    started = time.monotonic()
    for host in todo:
        try:
            _apply(driver, step, host, versions[host])
        except StepError as error:
            report.step_failed(step, batch_number, hosts, rollback, error)
            return error
        journal.mark(host, step)
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
