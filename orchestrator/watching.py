"""``drover watch``: one release as a table that is redrawn as its events arrive.

Pure: the lines are worked out from the release's state, its timeline and the fleet, so
the view is the same whether it is drawn once or every half second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.contract import Envelope, GateJudged, StepFailed, StepStarted, StepSucceeded
from orchestrator.fleet import Fleet
from orchestrator.fleet.stages import Batch, stages_of
from orchestrator.saga import ComponentState, ComponentStatus, ReleaseState
from orchestrator.vocabulary import Step

__all__ = ["watch_lines"]

_UNDONE = (ComponentStatus.ROLLED_BACK, ComponentStatus.ROLLBACK_FAILED)
_TO_UNDO = (ComponentStatus.DEPLOYED, ComponentStatus.TIMED_OUT, ComponentStatus.ROLLING_BACK)


@dataclass
class _Progress:
    """What the timeline says of one component."""

    batches_done: set[int] = field(default_factory=set)
    hosts_done: set[str] = field(default_factory=set)
    current: str = ""  # the step under way, or the last one
    failure: str = ""  # the forward step that failed, kept while its hosts are put back
    gates: dict[str, str] = field(default_factory=dict)  # gate -> verdict


def watch_lines(state: ReleaseState, timeline: Sequence[Envelope], fleet: Fleet) -> list[str]:
    progress = _progress(timeline)
    components = list(state.components.values())
    deployed = sum(c.status is ComponentStatus.DEPLOYED for c in components)
    lines = [
        f"{state.id} {state.environment}: {state.status}"
        + (f" (attempt {state.attempt})" if state.attempt > 1 else "")
        + f" · {deployed} of {len(components)} components deployed"
    ]
    if state.failure:
        lines.append(f"  why: {state.failure}")
    if state.waiting_for_approval:
        lines.append(f"  waiting for approval: {', '.join(state.waiting_for_approval)}")
    width = max(len(c.name) for c in components) if components else 0
    for component in components:
        lines.append(
            "  " + _component_line(component, progress.get(component.name), state, fleet, width)
        )
    lines.extend(_compensation_lines(state))
    return lines


def _component_line(
    component: ComponentState,
    progress: _Progress | None,
    state: ReleaseState,
    fleet: Fleet,
    width: int,
) -> str:
    head = f"{component.name:<{width}}  {component.target:<12} "
    if component.flag is not None:
        return f"{head}{'flag flip':<10} {component.status}"
    service = fleet.service(state.environment, component.service)
    strategy = component.strategy or service.strategy
    batches = [s for s in stages_of(service, strategy) if isinstance(s, Batch)]
    parts = [f"{head}{strategy.kind:<10} {component.status}"]
    if progress is not None:
        parts.append(f"batch {len(progress.batches_done)} of {len(batches)} done")
        parts.append(f"{len(progress.hosts_done)}/{len(service.hosts)} hosts")
        if progress.failure:
            parts.append(progress.failure)
        if progress.current and progress.current != progress.failure:
            parts.append(progress.current)
        parts += [f"{gate}: {verdict}" for gate, verdict in progress.gates.items()]
    return " · ".join(parts)


def _progress(timeline: Sequence[Envelope]) -> dict[str, _Progress]:
    seen: dict[str, _Progress] = {}
    for message in timeline:
        payload = message.payload
        if not isinstance(payload, StepStarted | StepSucceeded | StepFailed | GateJudged):
            continue
        if not isinstance(payload, GateJudged) and payload.step is Step.TOGGLE:
            continue  # a flag flip is a component of its own, shown by its status
        progress = seen.setdefault(payload.service, _Progress())
        if isinstance(payload, GateJudged):
            progress.gates[payload.gate] = payload.verdict
            continue
        if payload.rollback:
            progress.current = f"putting back: {payload.step}"
            continue
        progress.current = _step_words(payload)
        if isinstance(payload, StepFailed):
            progress.failure = progress.current
        if not isinstance(payload, StepSucceeded):
            continue
        if payload.step is Step.VERIFY:  # a host verified on the new version is done
            progress.hosts_done.update(payload.hosts)
        if payload.step in (Step.UNDRAIN, Step.SWITCH):  # a batch's (or a colour's) last step
            progress.batches_done.add(payload.batch)
    return seen


def _step_words(payload: StepStarted | StepSucceeded | StepFailed) -> str:
    where = f" batch {payload.batch}" if payload.hosts else ""
    if isinstance(payload, StepStarted):
        return f"{payload.step}{where} under way"
    if isinstance(payload, StepFailed):
        return f"{payload.step}{where} FAILED: {payload.reason}"
    return f"{payload.step}{where} done"


def _compensation_lines(state: ReleaseState) -> list[str]:
    if state.status.value not in ("compensating", "rolled_back", "failed"):
        return []
    components = state.components.values()
    done = [c.name for c in components if c.status in _UNDONE]
    pending = [c.name for c in components if c.status in _TO_UNDO]
    return [f"  compensations: pending {', '.join(pending) or '-'}; done {', '.join(done) or '-'}"]
