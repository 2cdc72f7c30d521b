"""What every stage is made of: one step on a batch of hosts, or on the service as a
whole, reported as it goes and written to a journal as soon as it is done.

Shared by the rollout (``workers/rollout.py``) and the undo (``workers/undo.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from orchestrator.fleet.checks import MetricGate
from orchestrator.vocabulary import Step
from workers.drivers import Driver, StepError
from workers.verification.gates import GateResult

__all__ = [
    "FORWARD",
    "SERVICE",
    "Journal",
    "Reporter",
    "RollbackResult",
    "RolloutResult",
    "Run",
    "cut",
    "run_step",
    "service_step",
]

FORWARD: Final = (Step.DRAIN, Step.DEPLOY, Step.VERIFY, Step.UNDRAIN)
SERVICE: Final = "*"  # the journal's "host" for what concerns the whole service
_OUTPUT_LIMIT: Final = 8000  # what a step report may carry (the contract's limit)


class Reporter(Protocol):
    """Where a rollout tells the world what it is doing (events on the bus)."""

    def step_started(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool
    ) -> None: ...

    def step_succeeded(
        self,
        step: Step,
        batch: int,
        hosts: Sequence[str],
        rollback: bool,
        *,
        duration_ms: float,
        output: str,
    ) -> None: ...

    def step_failed(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool, error: StepError
    ) -> None: ...

    def host_drained(
        self, host: str, waited_ms: float, in_flight_left: int, timed_out: bool
    ) -> None: ...

    def gate_judged(self, step: Step, result: GateResult) -> None: ...


class Journal(Protocol):
    """Which steps are done on which host, kept where a successor can read it."""

    def done(self, host: str) -> Sequence[Step]: ...

    def mark(self, host: str, step: Step) -> None:
        """Note a step done; it is on record by the next :meth:`settle` at the latest."""
        ...

    def settle(self) -> None:
        """Put on record the steps marked so far: called before an effect."""
        ...


# Judges gates for host groups ("canary", "baseline", "all") over what the hosts did since
# the given moment (when the hosts judged were last moved).
Judge = Callable[
    [Sequence[MetricGate], Step, Mapping[str, Sequence[str]], datetime], Sequence[GateResult]
]


@dataclass(frozen=True)
class Run:
    """What a rollout needs besides driver and stages: where to report, remember and ask."""

    report: Reporter
    journal: Journal  # the steps of this command
    undo_journal: Journal  # the steps of putting this command's hosts back
    # Asked between stages (waiting while the release is paused): a reason to stop, or None.
    should_stop: Callable[[], str | None]
    # Waits for a human on the named hold: None to go on, or why to stop.
    hold: Callable[[str, str], str | None]
    verify_host: Callable[[str, str], str]  # health checks on (host, version); raises StepError
    judge: Judge
    drain_timeout_s: float = 30


@dataclass(frozen=True)
class RolloutResult:
    failure: str | None = None  # why it did not finish: a step failed, a verdict, an abort
    restored: bool = True  # after a failure: every touched host is back where it was


@dataclass(frozen=True)
class RollbackResult:
    error: StepError | None = None
    hosts_left: tuple[str, ...] = ()  # not (known to be) back on their old version


def run_step(
    driver: Driver,
    step: Step,
    batch_number: int,
    hosts: Sequence[str],
    *,
    versions: Mapping[str, str],
    run: Run,
    rollback: bool = False,
) -> StepError | None:
    """Run one step on the hosts of a batch that have not done it; stop at the first failure."""
    journal = run.undo_journal if rollback else run.journal
    todo = [host for host in hosts if step not in journal.done(host)]
    if not todo:
        return None  # done before a takeover: nothing to do, nothing to report again
    run.report.step_started(step, batch_number, hosts, rollback)
    started = time.monotonic()
    outputs: list[str] = []
    for host in todo:
        journal.settle()  # the hosts before this one are on record before its effect
        try:
            output = _apply(driver, step, host, versions[host], run)
        except StepError as error:
            run.report.step_failed(step, batch_number, hosts, rollback, error)
            return error
        if output:
            outputs.append(f"{host}: {output.strip()}")
        journal.mark(host, step)
    elapsed_ms = (time.monotonic() - started) * 1000
    run.report.step_succeeded(
        step, batch_number, hosts, rollback, duration_ms=elapsed_ms, output=cut("\n".join(outputs))
    )
    return None


def service_step(
    step: Step,
    number: int,
    hosts: Sequence[str],
    run: Run,
    action: Callable[[], str],
    *,
    rollback: bool = False,
) -> StepError | None:
    """A step on the service as a whole (a traffic switch), journaled like a host's."""
    journal = run.undo_journal if rollback else run.journal
    if step in journal.done(SERVICE):
        return None
    run.report.step_started(step, number, hosts, rollback)
    started = time.monotonic()
    try:
        output = action()
    except StepError as error:
        run.report.step_failed(step, number, hosts, rollback, error)
        return error
    journal.mark(SERVICE, step)
    elapsed_ms = (time.monotonic() - started) * 1000
    run.report.step_succeeded(
        step, number, hosts, rollback, duration_ms=elapsed_ms, output=cut(output)
    )
    return None


def _apply(driver: Driver, step: Step, host: str, version: str, run: Run) -> str:
    match step:
        case Step.DRAIN:
            output = driver.drain(host)
            _wait_for_drain(driver, host, run)
            return output
        case Step.DEPLOY:
            return driver.deploy(host, version)
        case Step.VERIFY:
            checked = run.verify_host(host, version)
            return "\n".join(o for o in (driver.verify(host, version), checked) if o)
        case Step.UNDRAIN:
            return driver.undrain(host)
    raise ValueError(f"{step} is not a step on a host")


def _wait_for_drain(driver: Driver, host: str, run: Run) -> None:
    """Give the host's in-flight requests the drain timeout to finish, and say how it went."""
    started = time.monotonic()
    deadline = started + run.drain_timeout_s
    pause = 0.05
    while (left := driver.in_flight(host)) > 0 and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 1.0)
    waited_ms = (time.monotonic() - started) * 1000
    run.report.host_drained(host, waited_ms, left, timed_out=left > 0)


def cut(text: str) -> str:
    return text if len(text) <= _OUTPUT_LIMIT else text[: _OUTPUT_LIMIT - 1] + "…"
