"""Putting back what a rollout did: hosts to their old versions, last batch first, or for
blue/green, traffic switched back (the colour that served was never touched).

``roll_back`` is the saga's compensation of a finished component; ``undo_rollout`` is a
failed rollout putting back what its journal says it touched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final

from orchestrator.fleet.stages import Batch, Stage, Switch
from orchestrator.vocabulary import Step
from workers.drivers import Colour, Driver, StepError
from workers.steps import FORWARD, SERVICE, RollbackResult, Run, run_step, service_step

__all__ = ["roll_back", "undo_rollout"]

_ROLLBACK_ATTEMPTS: Final = 3  # a step of a rollback is tried this often before giving up
_ROLLBACK_BACKOFF_S: Final = 0.2  # doubled after each failed attempt


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
    batches = _batches_of(stages)
    deployed = {host: FORWARD for batch in batches for host in batch if host in to_versions}
    return _put_back(driver, batches, to_versions, deployed, run)


def undo_rollout(
    undo: Driver,
    stages: Sequence[Stage],
    previous: Mapping[str, str],
    run: Run,
    live: Colour,
) -> RollbackResult:
    if any(isinstance(stage, Switch) for stage in stages):
        # The colour that served was never touched: switching back (if traffic moved at
        # all) is the whole of putting it back.
        switched = Step.SWITCH in run.journal.done(SERVICE)
        return _switch_back(undo, stages, live, run) if switched else RollbackResult()
    batches = _batches_of(stages)
    done = {h: run.journal.done(h) for b in batches for h in b}
    return _put_back(undo, batches, previous, done, run)


def _switch_back(driver: Driver, stages: Sequence[Stage], live: Colour, run: Run) -> RollbackResult:
    error: StepError | None = None
    for attempt in range(_ROLLBACK_ATTEMPTS):
        if attempt:
            time.sleep(_ROLLBACK_BACKOFF_S * 2 ** (attempt - 1))
        error = service_step(Step.SWITCH, 1, (), run, lambda: driver.switch(live), rollback=True)
        if error is None:
            return RollbackResult()
    hosts = tuple(h for stage in stages if isinstance(stage, Batch) for h in stage.hosts)
    return RollbackResult(error, hosts)


def _batches_of(stages: Sequence[Stage]) -> list[tuple[str, ...]]:
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
        for step in FORWARD:
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
        error = run_step(driver, step, number, hosts, versions=versions, run=run, rollback=True)
        if error is None:
            return None
    return error


def _undo_steps(done: Sequence[Step]) -> set[Step]:
    """What a host needs to be back on its old version and serving traffic."""
    drained = Step.DRAIN in done and Step.UNDRAIN not in done
    if Step.DEPLOY in done:
        return {Step.DEPLOY, Step.VERIFY, Step.UNDRAIN} | (set() if drained else {Step.DRAIN})
    return {Step.UNDRAIN} if drained else set()
