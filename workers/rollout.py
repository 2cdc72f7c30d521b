"""How one component moves through its hosts, stage by stage (see ``orchestrator.fleet.stages``).

A batch goes drain -> deploy -> verify -> undrain; a drain waits for the host's in-flight
requests. A canary bakes and is analysed between its batches; metric gates judge the
whole service at the end; blue/green deploys the idle colour and switches traffic to it.
An inconclusive verdict waits for a human.

A rollout that fails (or is aborted) part-way puts back what it touched before it reports
the component failed, so the saga only compensates components that finished: hosts go
back to their old versions batch by batch in reverse; for blue/green, traffic is switched
back and no host is redeployed.

Every step done is written to a journal as soon as it is done. A worker that takes over a
component from a dead one reads the journal and carries on where it stopped: a step in
the journal is never done again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from orchestrator.fleet.checks import MetricGate
from orchestrator.fleet.stages import Analysis, Bake, Batch, Gates, Stage, Switch
from orchestrator.vocabulary import Step
from workers.drivers import Colour, Driver, StepError
from workers.verification.gates import GateResult, overall

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
_IDLE: Final = (Step.DEPLOY, Step.VERIFY)  # an idle colour serves nothing: no drain
_ROLLBACK_ATTEMPTS: Final = 3  # a step of a rollback is tried this often before giving up
_ROLLBACK_BACKOFF_S: Final = 0.2  # doubled after each failed attempt
_OUTPUT_LIMIT: Final = 8000  # what a step report may carry (the contract's limit)
_SLICE_S: Final = 1.0  # a bake looks up (abort? pause?) this often
_SERVICE: Final = "*"  # the journal's "host" for what concerns the whole service


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

    def mark(self, host: str, step: Step) -> None: ...


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


def roll_out(
    driver: Driver,
    stages: Sequence[Stage],
    version: str,
    previous: Mapping[str, str],
    run: Run,
    *,
    undo: Driver,
    live: Colour,
) -> RolloutResult:
    """Move every host to ``version``; on failure put back what was touched, with ``undo``.

    ``undo`` is the same kind of driver for the same hosts, told that what it does is a
    rollback, so that the two are never mistaken for each other (e.g. in effect counts).
    ``live`` is the colour that served before, for a blue/green rollout.
    """
    hosts = [h for stage in stages if isinstance(stage, Batch) for h in stage.hosts]
    moved_at = datetime.now(UTC)  # when hosts last changed: metrics before it are the old
    for index, stage in enumerate(stages):
        failure = run.should_stop() if index else None
        if failure is None:
            failure = _stage(driver, stage, version, run, _Moved(hosts, moved_at))
        if isinstance(stage, Batch | Switch):
            moved_at = datetime.now(UTC)
        if failure is not None:
            put_back = _undo_rollout(undo, stages, previous, run, live)
            return RolloutResult(failure, restored=put_back.error is None)
    return RolloutResult()


def roll_back(
    driver: Driver,
    stages: Sequence[Stage],
    to_versions: Mapping[str, str],
    run: Run,
    *,
    live: Colour,
) -> RollbackResult:
    """Undo a finished rollout: switch back (blue/green), or return every host, last batch first."""
    if any(isinstance(stage, Switch) for stage in stages):
        return _switch_back(driver, stages, live, run)
    batches = _batches(stages)
    deployed = {host: _FORWARD for batch in batches for host in batch if host in to_versions}
    return _put_back(driver, batches, to_versions, deployed, run)


@dataclass(frozen=True)
class _Moved:
    hosts: Sequence[str]  # every host of the rollout
    at: datetime  # when the last of them changed


def _stage(driver: Driver, stage: Stage, version: str, run: Run, moved: _Moved) -> str | None:
    """Carry out one stage; why it failed, or None."""
    match stage:
        case Batch(number=number, hosts=batch, drain=drain):
            for step in _FORWARD if drain else _IDLE:
                versions = dict.fromkeys(batch, version)
                error = _step(driver, step, number, batch, versions=versions, run=run)
                if error:
                    return str(error)
            return None
        case Bake(number=number, seconds=seconds):
            return _bake(number, seconds, run)
        case Analysis(number=number, gates=gates, canary=canary):
            baseline = [h for h in moved.hosts if h not in canary]
            groups = {"canary": canary, "baseline": baseline}
            return _judged(
                f"analysis-{number}", gates, Step.ANALYSE, groups, since=moved.at, run=run
            )
        case Gates(gates=gates):
            # Judged once the new version has served a whole window: a gate judged at
            # once would find no figures of it, only an inconclusive empty window.
            full = moved.at + timedelta(seconds=max(g.window_s for g in gates))
            stop = _wait_until(full, run)
            if stop is not None:
                return stop
            return _judged("gates", gates, Step.GATE, {"all": moved.hosts}, since=moved.at, run=run)
        case Switch(number=number, to=colour):
            error = _whole_service(Step.SWITCH, number, (), run, lambda: driver.switch(colour))
            return str(error) if error else None
    raise TypeError(f"unknown stage {stage!r}")


def _bake(number: int, seconds: float, run: Run) -> str | None:
    key = f"bake-{number}"
    if Step.BAKE in run.journal.done(key):
        return None
    run.report.step_started(Step.BAKE, number, (), False)
    stop = _wait_until(datetime.now(UTC) + timedelta(seconds=seconds), run)
    if stop is not None:
        return stop
    run.journal.mark(key, Step.BAKE)
    run.report.step_succeeded(Step.BAKE, number, (), False, duration_ms=seconds * 1000, output="")
    return None


def _wait_until(moment: datetime, run: Run) -> str | None:
    """Sleep until ``moment``, looking up now and then: a reason to stop, or None."""
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:
        time.sleep(min(left, _SLICE_S))
        stop = run.should_stop()
        if stop is not None:
            return stop
    return None


def _judged(
    hold: str,
    gates: Sequence[MetricGate],
    step: Step,
    groups: Mapping[str, Sequence[str]],
    *,
    since: datetime,
    run: Run,
) -> str | None:
    """Judge gates; fail stops the rollout, inconclusive asks a human."""
    if step in run.journal.done(hold):
        return None
    run.report.step_started(step, 1, (), False)
    started = time.monotonic()
    results = run.judge(gates, step, groups, since)
    for result in results:
        run.report.gate_judged(step, result)
    verdict = overall(results)
    summary = "; ".join(f"{r.gate}: {r.verdict} ({r.reason})" for r in results)
    if verdict == "fail":
        run.report.step_failed(step, 1, (), False, StepError(step, "", summary))
        return f"{step} failed: {summary}"
    if verdict == "inconclusive":
        stop = run.hold(hold, f"{step} inconclusive: {summary}")
        if stop is not None:
            return stop
    run.journal.mark(hold, step)
    elapsed_ms = (time.monotonic() - started) * 1000
    run.report.step_succeeded(step, 1, (), False, duration_ms=elapsed_ms, output=_cut(summary))
    return None


def _undo_rollout(
    undo: Driver,
    stages: Sequence[Stage],
    previous: Mapping[str, str],
    run: Run,
    live: Colour,
) -> RollbackResult:
    if any(isinstance(stage, Switch) for stage in stages):
        # The colour that served was never touched: switching back (if traffic moved at
        # all) is the whole of putting it back.
        switched = Step.SWITCH in run.journal.done(_SERVICE)
        return _switch_back(undo, stages, live, run) if switched else RollbackResult()
    batches = _batches(stages)
    done = {h: run.journal.done(h) for b in batches for h in b}
    return _put_back(undo, batches, previous, done, run)


def _switch_back(driver: Driver, stages: Sequence[Stage], live: Colour, run: Run) -> RollbackResult:
    error: StepError | None = None
    for attempt in range(_ROLLBACK_ATTEMPTS):
        if attempt:
            time.sleep(_ROLLBACK_BACKOFF_S * 2 ** (attempt - 1))
        error = _whole_service(Step.SWITCH, 1, (), run, lambda: driver.switch(live), rollback=True)
        if error is None:
            return RollbackResult()
    hosts = tuple(h for stage in stages if isinstance(stage, Batch) for h in stage.hosts)
    return RollbackResult(error, hosts)


def _batches(stages: Sequence[Stage]) -> list[tuple[str, ...]]:
    return [stage.hosts for stage in stages if isinstance(stage, Batch)]


def _put_back(
    driver: Driver,
    batches: Sequence[Sequence[str]],
    versions: Mapping[str, str],
    done: Mapping[str, Sequence[Step]],
    run: Run,
) -> RollbackResult:
    """Undo what ``done`` says happened to each host, batch by batch in reverse.

    A host that cannot be put back stays as it is (drained, if it was) and is named; the
    others are still put back: one sick host must not leave the healthy ones on the new
    version. Batches keep the numbers they had on the way out, so a timeline reads
    "rollback of batch 2" for the hosts that were batch 2.
    """
    failed: dict[str, StepError] = {}
    for number, batch in reversed(list(enumerate(batches, start=1))):
        for step in _FORWARD:
            while hosts := [
                h for h in batch if h not in failed and step in _undo_steps(done.get(h, ()))
            ]:
                error = _retried(driver, step, number, hosts, versions=versions, run=run)
                if error is None:
                    break
                failed[error.host if error.host in hosts else hosts[0]] = error
    if not failed:
        return RollbackResult()
    return RollbackResult(next(iter(failed.values())), tuple(failed))


def _retried(
    driver: Driver,
    step: Step,
    number: int,
    hosts: Sequence[str],
    *,
    versions: Mapping[str, str],
    run: Run,
) -> StepError | None:
    """A rollback step, tried again with backoff: undoing is worth more patience."""
    error: StepError | None = None
    for attempt in range(_ROLLBACK_ATTEMPTS):
        if attempt:
            time.sleep(_ROLLBACK_BACKOFF_S * 2 ** (attempt - 1))
        error = _step(driver, step, number, hosts, versions=versions, run=run, rollback=True)
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
        step, batch_number, hosts, rollback, duration_ms=elapsed_ms, output=_cut("\n".join(outputs))
    )
    return None


def _whole_service(
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
    if step in journal.done(_SERVICE):
        return None
    run.report.step_started(step, number, hosts, rollback)
    started = time.monotonic()
    try:
        output = action()
    except StepError as error:
        run.report.step_failed(step, number, hosts, rollback, error)
        return error
    journal.mark(_SERVICE, step)
    elapsed_ms = (time.monotonic() - started) * 1000
    run.report.step_succeeded(
        step, number, hosts, rollback, duration_ms=elapsed_ms, output=_cut(output)
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


def _cut(text: str) -> str:
    return text if len(text) <= _OUTPUT_LIMIT else text[: _OUTPUT_LIMIT - 1] + "…"
