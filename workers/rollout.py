"""How one component moves through its hosts, stage by stage (see ``orchestrator.fleet.stages``).

A batch goes drain -> deploy -> verify -> undrain; a drain waits for the host's in-flight
requests. A canary bakes and is analysed between its batches; metric gates judge the
whole service at the end; blue/green deploys the idle colour and switches traffic to it.
An inconclusive verdict waits for a human.

A rollout that fails (or is aborted) part-way puts back what it touched before it reports
the component failed (``workers/undo.py``), so the saga only compensates components that
finished.

Every step done is written to a journal before the next effect. A worker that takes over
a component from a dead one reads the journal and carries on where it stopped: a step in
the journal is never done again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from orchestrator.fleet.checks import MetricGate
from orchestrator.fleet.stages import Analysis, Bake, Batch, Gates, Stage, Switch
from orchestrator.vocabulary import Step
from workers.drivers import Colour, Driver, StepError
from workers.steps import (
    FORWARD,
    RolloutResult,
    Run,
    cut,
    run_step,
    service_step,
)
from workers.undo import undo_rollout
from workers.verification.gates import overall

__all__ = ["roll_out"]

_IDLE: Final = (Step.DEPLOY, Step.VERIFY)  # an idle colour serves nothing: no drain
_SLICE_S: Final = 1.0  # a bake looks up (abort? pause?) this often


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
            undone = undo_rollout(undo, stages, previous, run, live)
            return RolloutResult(failure, restored=undone.error is None)
    return RolloutResult()


@dataclass(frozen=True)
class _Moved:
    hosts: Sequence[str]  # every host of the rollout
    at: datetime  # when the last of them changed


def _stage(driver: Driver, stage: Stage, version: str, run: Run, moved: _Moved) -> str | None:
    """Carry out one stage; why it failed, or None."""
    match stage:
        case Batch(number=number, hosts=batch, drain=drain):
            for step in FORWARD if drain else _IDLE:
                versions = dict.fromkeys(batch, version)
                error = run_step(driver, step, number, batch, versions=versions, run=run)
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
            error = service_step(Step.SWITCH, number, (), run, lambda: driver.switch(colour))
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
    run.report.step_succeeded(step, 1, (), False, duration_ms=elapsed_ms, output=cut(summary))
    return None
