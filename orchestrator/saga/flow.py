"""The saga's own motion: starting components, hearing from workers, deadlines, and
compensation in reverse dependency order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from orchestrator.contract import (
    ApprovalRequested,
    ComponentDeployed,
    ComponentFailed,
    ComponentHeld,
    ComponentRollbackFailed,
    ComponentRolledBack,
    DeadlinePassed,
    DeployComponent,
    FlagToggled,
    FlagToggleFailed,
    Message,
    ReleaseFailed,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackComponent,
    ToggleFlag,
)
from orchestrator.fleet import Fleet
from orchestrator.saga.index import HOLDING, TO_UNDO
from orchestrator.saga.state import ComponentState, ComponentStatus, Decision, ReleaseState
from orchestrator.saga.state import ReleaseStatus as Status

__all__ = [
    "MAX_RESENDS",
    "advance",
    "begin_compensating",
    "check_deadlines",
    "continue_release",
    "end_compensation",
    "overdue",
    "rearm_deadlines",
    "with_component",
]

# A command nobody answers before its deadline is sent again this often (it may have been
# lost between broker and worker) before the component is given up as timed out.
MAX_RESENDS: Final = 2

# Approval a component needs before it is sent (see ComponentState.approved).
START_APPROVAL: Final = "start"


def with_component(state: ReleaseState, component: ComponentState, at: datetime) -> ReleaseState:
    return with_components(state, {component.name: component}, at)


def with_components(
    state: ReleaseState, changed: Mapping[str, ComponentState], at: datetime
) -> ReleaseState:
    """``state`` with the components ``changed`` (by name) replaced."""
    components = {**state.components, **changed}
    state.index.moved(state.components, components, changed)
    return state.model_copy(update={"components": components, "updated_at": at})


def _key(payload: Message) -> str:
    """The component a worker's message is about."""
    service = getattr(payload, "service", "")
    flag = getattr(payload, "flag", None)
    return f"{service}.{flag}" if flag else service


def advance(state: ReleaseState, payload: Message, at: datetime, fleet: Fleet) -> Decision:
    """What a worker's outcome, or its stop for a human, changes.

    Its other reports (steps, drains, gates) go to the store and change nothing here;
    when they last came is read when a deadline passes (:func:`check_deadlines`).
    """
    component = state.components.get(_key(payload))
    if component is None:
        return Decision(state)  # release-level events: nothing to decide
    if isinstance(payload, ComponentHeld):
        return _held(state, component, payload.hold, payload.reason, at)
    ended = _outcome(component, payload)
    if ended is None:
        return Decision(state)
    state = with_component(state, ended, at)
    if ended.status is ComponentStatus.FAILED and state.status in _FORWARD:
        state = begin_compensating(state, f"{ended.name}: {ended.reason}", at, fleet)
    return continue_release(state, at, fleet)


def _outcome(component: ComponentState, payload: Message) -> ComponentState | None:
    """The component after a worker's last word on a command; None if it is not one."""
    match payload:
        case ComponentDeployed(previous_versions=previous):
            return component.moved_to(
                ComponentStatus.DEPLOYED, previous_versions=previous, deadline=None, held=""
            )
        case FlagToggled(undo=False):
            return component.moved_to(ComponentStatus.DEPLOYED, deadline=None)
        case ComponentFailed(reason=reason, restored=restored):
            return component.moved_to(
                ComponentStatus.FAILED, reason=reason, restored=restored, deadline=None, held=""
            )
        case FlagToggleFailed(undo=False, reason=reason):
            return component.moved_to(ComponentStatus.FAILED, reason=reason, deadline=None)
        case ComponentRolledBack() | FlagToggled(undo=True):
            return component.moved_to(ComponentStatus.ROLLED_BACK, deadline=None)
        case ComponentRollbackFailed(reason=reason) | FlagToggleFailed(undo=True, reason=reason):
            return component.moved_to(ComponentStatus.ROLLBACK_FAILED, reason=reason, deadline=None)
    return None


_FORWARD: Final = frozenset({Status.RUNNING, Status.PAUSED})


def _held(
    state: ReleaseState, component: ComponentState, hold: str, reason: str, at: datetime
) -> Decision:
    """A worker waits for a human: the release pauses, and the component's clock stops."""
    if (
        component.status is not ComponentStatus.DEPLOYING
        or hold in component.approved
        or component.held == hold
        or state.status not in _FORWARD
    ):
        return Decision(state)  # approved already, a repeat, or being undone anyway
    updated = component.model_copy(update={"held": hold, "deadline": None})
    paused = with_component(state, updated, at).model_copy(update={"status": Status.PAUSED})
    return Decision(paused, (ApprovalRequested(component=component.name, reason=reason),))


def continue_release(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    if state.status in _FORWARD:
        return _continue_forward(state, at, fleet)
    return _continue_compensating(state, at, fleet)


def _deadline(component: ComponentState, at: datetime, environment: str, fleet: Fleet) -> datetime:
    """One step's time from the last word, but never past the component's own limit."""
    service = fleet.service(environment, component.service)
    sent_at = component.sent_at or at
    whole = sent_at + timedelta(seconds=service.component_timeout_s)
    return min(whole, at + timedelta(seconds=service.step_timeout_s))


def rearm_deadlines(state: ReleaseState, at: datetime, fleet: Fleet) -> ReleaseState:
    """Start the clocks of components in flight again, from now (after a pause)."""
    for component in state.components.values():
        in_flight = component.status in (ComponentStatus.DEPLOYING, ComponentStatus.ROLLING_BACK)
        if in_flight and component.deadline is None and not component.held:
            # Their limit counts from now too: the paused time was nobody's fault.
            fresh = component.model_copy(update={"sent_at": at})
            fresh = fresh.model_copy(
                update={"deadline": _deadline(fresh, at, state.environment, fleet)}
            )
            state = with_component(state, fresh, at)
    return state


def overdue(state: ReleaseState, now: datetime) -> list[ComponentState]:
    """The components in flight whose deadline has come by ``now``."""
    return [c for c in state.components.values() if c.deadline is not None and c.deadline <= now]


def check_deadlines(
    state: ReleaseState, now: datetime, last_words: Mapping[str, datetime], fleet: Fleet
) -> Decision:
    """Overdue components: still heard from, sent again, or given up on.

    A worker that reported since its deadline was set is alive: its next report is due
    a step after its last one (``last_words``), as if that report had come here.
    """
    silent: list[ComponentState] = []
    for component in overdue(state, now):
        word = last_words.get(component.name)
        deadline = _deadline(component, word, state.environment, fleet) if word else now
        if deadline > now:
            state = with_component(state, component.model_copy(update={"deadline": deadline}), now)
        else:
            silent.append(component)
    if not silent:
        return Decision(state)
    resent: list[Message] = []
    late: list[ComponentState] = []
    for component in silent:
        if component.resends < MAX_RESENDS and not _out_of_time(component, now, state, fleet):
            state, command = _resend(state, component, now, fleet)
            resent.append(command)
        else:
            late.append(component)
    if not late:
        return Decision(state, tuple(resent))
    notices: list[Message] = [*resent]
    for component in late:
        assert component.deadline is not None
        deploying = component.status is ComponentStatus.DEPLOYING
        waited_for = f"{'deploy' if deploying else 'rollback'} of {component.name}"
        reason = f"no word from the worker by {component.deadline.isoformat()} ({waited_for})"
        status = ComponentStatus.TIMED_OUT if deploying else ComponentStatus.ROLLBACK_FAILED
        state = with_component(state, component.moved_to(status, reason=reason, deadline=None), now)
        notices.append(
            DeadlinePassed(
                environment=state.environment,
                service=component.service,
                deadline=component.deadline,
                waited_for=waited_for,
            )
        )
    if state.status in _FORWARD:
        first = state.components[late[0].name]
        state = begin_compensating(state, f"{first.name}: {first.reason}", now, fleet)
    decision = continue_release(state, now, fleet)
    return Decision(decision.state, (*notices, *decision.outgoing))


def _out_of_time(
    component: ComponentState, now: datetime, state: ReleaseState, fleet: Fleet
) -> bool:
    """The component's own limit has passed: no resend can help."""
    limit = fleet.service(state.environment, component.service).component_timeout_s
    return component.sent_at is not None and now >= component.sent_at + timedelta(seconds=limit)


def _resend(
    state: ReleaseState, component: ComponentState, now: datetime, fleet: Fleet
) -> tuple[ReleaseState, Message]:
    """Send a command again that nobody has answered: it may have been lost on the way.

    Safe because workers carry out a command at most once per component (the lease, the
    journal, declarative steps) and only while the saga still waits for it.
    """
    deadline = _deadline(component, now, state.environment, fleet)
    updated = component.model_copy(update={"resends": component.resends + 1, "deadline": deadline})
    return with_component(state, updated, now), _command_for(state, component)


def _command_for(state: ReleaseState, component: ComponentState) -> Message:
    undo = component.status is ComponentStatus.ROLLING_BACK
    if component.flag is not None:
        return ToggleFlag(
            environment=state.environment,
            service=component.service,
            flag=component.flag,
            enabled=component.enabled,
            undo=undo,
            attempt=component.attempt,
        )
    assert component.version is not None  # a component is a flag flip or a deploy
    if undo:
        return RollbackComponent(
            environment=state.environment,
            service=component.service,
            from_version=component.version,
            to_versions=component.previous_versions,
            strategy=component.strategy,
            attempt=component.attempt,
        )
    return DeployComponent(
        environment=state.environment,
        service=component.service,
        version=component.version,
        strategy=component.strategy,
        attempt=component.attempt,
    )


def _continue_forward(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    deployed = state.index.count(state.components, ComponentStatus.DEPLOYED)
    if deployed == len(state.components):
        done = _finish(state, Status.SUCCEEDED, at)
        return Decision(done, (ReleaseSucceeded(),))
    if state.status is Status.PAUSED:
        return Decision(state)  # nothing new starts until a human says go on
    return _start_ready(state, at, fleet)


def _start_ready(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    """Send every waiting component whose dependencies are all deployed.

    A component that needs an approval asks for one first, and is sent once it has it.
    """
    changed: dict[str, ComponentState] = {}
    outgoing: list[Message] = []
    for component in state.index.ready(state.components):
        name = component.name
        if _needs_approval(component, state, fleet):
            if component.status is ComponentStatus.PENDING:
                changed[name] = component.moved_to(ComponentStatus.AWAITING_APPROVAL)
                reason = f"{name} to {component.target} needs an approval to start"
                outgoing.append(ApprovalRequested(component=name, reason=reason))
            continue
        changed[name] = _sent(component, ComponentStatus.DEPLOYING, at, state, fleet)
        outgoing.append(_command_for(state, changed[name]))
    return Decision(with_components(state, changed, at), tuple(outgoing))


def _needs_approval(component: ComponentState, state: ReleaseState, fleet: Fleet) -> bool:
    service = fleet.service(state.environment, component.service)
    asked = component.requires_approval or service.requires_approval
    return asked and START_APPROVAL not in component.approved


def _sent(
    component: ComponentState,
    status: ComponentStatus,
    at: datetime,
    state: ReleaseState,
    fleet: Fleet,
) -> ComponentState:
    fresh = component.model_copy(update={"sent_at": at, "resends": 0})
    return fresh.moved_to(status, deadline=_deadline(fresh, at, state.environment, fleet))


def begin_compensating(
    state: ReleaseState,
    failure: str,
    at: datetime,
    fleet: Fleet,
    aborted_by: str | None = None,
) -> ReleaseState:
    """Stop going forward: what never started is skipped, and every clock runs again."""
    components = {name: _stopped(component) for name, component in state.components.items()}
    compensating = state.model_copy(
        update={
            "status": Status.COMPENSATING,
            "failure": failure,
            "aborted_by": aborted_by,
            "paused_by": None,
            "components": components,
        }
    )
    return rearm_deadlines(compensating, at, fleet)


def _stopped(component: ComponentState) -> ComponentState:
    """A component once the release stops going forward."""
    if component.status in (ComponentStatus.PENDING, ComponentStatus.AWAITING_APPROVAL):
        return component.moved_to(ComponentStatus.SKIPPED)
    if component.held:
        # A held worker is told by the abort to put its hosts back: it must be heard from.
        return component.model_copy(update={"held": ""})
    return component


def _continue_compensating(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    if state.index.count(state.components, ComponentStatus.DEPLOYING):
        return Decision(state)  # those in flight finish before anything is undone
    rolling_back = state.index.count(state.components, ComponentStatus.ROLLING_BACK)
    changed: dict[str, ComponentState] = {}
    commands: list[Message] = []
    for component in _ready_to_roll_back(state):
        changed[component.name] = _sent(component, ComponentStatus.ROLLING_BACK, at, state, fleet)
        commands.append(_command_for(state, changed[component.name]))
    if changed:
        state = with_components(state, changed, at)
    if commands or rolling_back:
        return Decision(state, tuple(commands))
    return end_compensation(state, at)


def _ready_to_roll_back(state: ReleaseState) -> list[ComponentState]:
    """Deployed (or timed-out) components none of whose dependents still holds them,
    in the release's order; but not those a component that could not be put back
    depends on (:func:`_pinned_by_failed_rollback`)."""
    pinned = _pinned_by_failed_rollback(state)
    if not pinned:
        return state.index.undoable(state.components)
    # A dependent that is pinned holds nothing: it is left as it is either way.
    held: set[str] = set()
    for component in state.components.values():
        if component.status in HOLDING and component.name not in pinned:
            held.update(component.depends_on)
    return [
        c
        for c in state.components.values()
        if c.status in TO_UNDO and c.name not in pinned and c.name not in held
    ]


def _pinned_by_failed_rollback(state: ReleaseState) -> set[str]:
    """Everything a component that could not be put back depends on, transitively.

    A component could not be put back when its rollback failed, or when it failed and its
    own worker could not restore its hosts: either way some of them may run the new version.
    """
    pinned: set[str] = set()
    frontier = state.index.not_put_back(state.components)
    while frontier:
        for dependency in frontier.pop().depends_on:
            if dependency not in pinned:
                pinned.add(dependency)
                frontier.append(state.components[dependency])
    return pinned


def end_compensation(state: ReleaseState, at: datetime) -> Decision:
    stuck = [
        c
        for c in state.components.values()
        if c.status
        in (ComponentStatus.ROLLBACK_FAILED, ComponentStatus.DEPLOYED, ComponentStatus.TIMED_OUT)
        or (c.status is ComponentStatus.FAILED and not c.restored)
    ]
    if not stuck:
        done = _finish(state, Status.ROLLED_BACK, at)
        return Decision(done, (ReleaseRolledBack(reason=state.failure),))
    attention = tuple(f"{c.name}: {c.status} ({c.reason or 'left on ' + c.target})" for c in stuck)
    reason = f"{state.failure}; compensation incomplete for " + ", ".join(c.name for c in stuck)
    done = _finish(state, Status.FAILED, at)
    return Decision(done, (ReleaseFailed(reason=reason, needs_attention=attention),))


def _finish(state: ReleaseState, status: Status, at: datetime) -> ReleaseState:
    return state.model_copy(update={"status": status, "finished_at": at, "updated_at": at})
