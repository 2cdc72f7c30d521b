"""The release saga: every decision the coordinator takes, as a pure function.

``decide(state, message, fleet)`` returns the new state and the payloads to send. It does
no I/O, reads no clock and draws no random numbers, so the same inputs always give the
same decision: that is what makes crash-and-resume and duplicate delivery safe, and what
lets the tests walk every path without a broker.

Ordering rules:

* a component starts once every component it depends on is deployed;
* after the first failure no new component starts; those in flight are waited for;
* then deployed components are rolled back in reverse dependency order: a component is
  rolled back only after everything that depends on it has been rolled back, and
  independent components are rolled back side by side;
* a component whose rollback failed pins what it depends on: those are left as they are
  and named for a human, because undoing them under a component still on its new
  version could break it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict

from orchestrator.contract import (
    AbortRelease,
    CheckDeadlines,
    ComponentDeployed,
    ComponentFailed,
    ComponentRequest,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    DeployComponent,
    Envelope,
    Message,
    Problem,
    ReleaseAccepted,
    ReleaseFailed,
    ReleaseRejected,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackComponent,
    StartRelease,
    StepFailed,
    StepStarted,
    StepSucceeded,
    SubmitRelease,
)
from orchestrator.plans import Fleet, InvalidInput, plan_release

__all__ = [
    "ComponentState",
    "ComponentStatus",
    "Decision",
    "ReleaseState",
    "ReleaseStatus",
    "decide",
    "refuse_submission",
]


class ReleaseStatus(StrEnum):
    QUEUED = "queued"  # accepted, waiting for releases that hold its services
    RUNNING = "running"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # a compensation could not be done: a human is needed
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RELEASE


_TERMINAL_RELEASE: Final = frozenset(
    {
        ReleaseStatus.SUCCEEDED,
        ReleaseStatus.ROLLED_BACK,
        ReleaseStatus.FAILED,
        ReleaseStatus.REJECTED,
    }
)


class ComponentStatus(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"  # its worker reported failure (and put its own hosts back)
    TIMED_OUT = "timed_out"  # no word from its worker in time: it is put back like a deployed one
    SKIPPED = "skipped"  # never started: the release failed first
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


# A command nobody answers before its deadline is sent again this often (it may have been
# lost between broker and worker) before the component is given up as timed out.
MAX_RESENDS: Final = 2

# The only moves a component may make; anything else is a duplicate or late message.
COMPONENT_TRANSITIONS: Final[Mapping[ComponentStatus, frozenset[ComponentStatus]]] = {
    ComponentStatus.PENDING: frozenset({ComponentStatus.DEPLOYING, ComponentStatus.SKIPPED}),
    ComponentStatus.DEPLOYING: frozenset(
        {ComponentStatus.DEPLOYED, ComponentStatus.FAILED, ComponentStatus.TIMED_OUT}
    ),
    ComponentStatus.DEPLOYED: frozenset({ComponentStatus.ROLLING_BACK}),
    ComponentStatus.TIMED_OUT: frozenset({ComponentStatus.ROLLING_BACK}),
    ComponentStatus.ROLLING_BACK: frozenset(
        {ComponentStatus.ROLLED_BACK, ComponentStatus.ROLLBACK_FAILED}
    ),
    ComponentStatus.FAILED: frozenset(),
    ComponentStatus.SKIPPED: frozenset(),
    ComponentStatus.ROLLED_BACK: frozenset(),
    ComponentStatus.ROLLBACK_FAILED: frozenset(),
}


class ComponentState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    version: str
    depends_on: tuple[str, ...] = ()
    status: ComponentStatus = ComponentStatus.PENDING
    previous_versions: dict[str, str] = {}
    restored: bool = True  # for a FAILED component: did its worker put its hosts back?
    reason: str = ""
    # When the coordinator gives up waiting for the worker (set while it is sent and
    # working; see _deadline): a report after it is ignored.
    deadline: datetime | None = None
    sent_at: datetime | None = None
    resends: int = 0  # times the command in flight was sent again for want of an answer

    @property
    def previous_version(self) -> str | None:
        """The version the hosts ran before, when they all ran the same one."""
        versions = set(self.previous_versions.values())
        return versions.pop() if len(versions) == 1 else None

    def moved_to(self, status: ComponentStatus, **changes: object) -> ComponentState:
        if status not in COMPONENT_TRANSITIONS[self.status]:
            raise _IllegalTransition(self.service, self.status, status)
        return self.model_copy(update={"status": status, **changes})


class ReleaseState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    environment: str
    reason: str = ""
    requested_by: str
    status: ReleaseStatus
    components: dict[str, ComponentState] = {}
    failure: str = ""  # the first thing that went wrong, in words
    aborted_by: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @property
    def next_deadline(self) -> datetime | None:
        """The earliest moment a component in flight must have reported by."""
        deadlines = [c.deadline for c in self.components.values() if c.deadline is not None]
        return min(deadlines, default=None)


@dataclass(frozen=True)
class Decision:
    state: ReleaseState | None
    outgoing: tuple[Message, ...] = field(default=())


class _IllegalTransition(Exception):
    def __init__(self, service: str, current: ComponentStatus, wanted: ComponentStatus):
        super().__init__(f"{service}: {current} -> {wanted} is not allowed")


def decide(state: ReleaseState | None, message: Envelope, fleet: Fleet) -> Decision:
    """The saga's one decision: what the release becomes, and what to send, after ``message``."""
    payload = message.payload
    if state is None:
        if isinstance(payload, SubmitRelease):
            return _submitted(payload, message, fleet)
        return Decision(None)  # an event for a release this store never accepted
    if state.status.is_terminal:
        return Decision(state)  # no transition ever leaves a terminal state
    at = message.occurred_at
    try:
        match payload:
            case StartRelease() if state.status is ReleaseStatus.QUEUED:
                running = state.model_copy(update={"status": ReleaseStatus.RUNNING})
                return _continue_forward(running, at, fleet)
            case AbortRelease(reason=reason):
                return _aborted(state, message.actor, reason, at, fleet)
            case CheckDeadlines(now=now):
                return _check_deadlines(state, now, fleet)
        return _advance(state, payload, at, fleet)
    except _IllegalTransition:
        return Decision(state)  # a duplicate or late report: it changes nothing


def _submitted(request: SubmitRelease, message: Envelope, fleet: Fleet) -> Decision:
    created = _new_release(
        message.release_id, message.actor, message.occurred_at, request.environment, request.reason
    )
    try:
        plan_release(fleet, request)
    except InvalidInput as invalid:
        return _rejected(created, invalid.problems)
    components = {c.service: _component(c) for c in request.components}
    accepted = ReleaseAccepted(
        environment=request.environment, reason=request.reason, components=request.components
    )
    # Queued until the coordinator holds the locks of all its services: StartRelease.
    return Decision(created.model_copy(update={"components": components}), (accepted,))


def refuse_submission(
    *, release_id: str, actor: str, at: datetime, problems: Sequence[Problem]
) -> Decision:
    """A submission whose payload could not even be read: the release ends ``rejected``."""
    return _rejected(_new_release(release_id, actor, at, environment="?", reason=""), problems)


def _new_release(
    release_id: str, actor: str, at: datetime, environment: str, reason: str
) -> ReleaseState:
    return ReleaseState(
        id=release_id,
        environment=environment,
        reason=reason,
        requested_by=actor,
        status=ReleaseStatus.QUEUED,
        created_at=at,
        updated_at=at,
    )


def _rejected(created: ReleaseState, problems: Sequence[Problem]) -> Decision:
    rejected = created.model_copy(
        update={
            "status": ReleaseStatus.REJECTED,
            "failure": "; ".join(str(p) for p in problems),
            "finished_at": created.created_at,
        }
    )
    return Decision(rejected, (ReleaseRejected(problems=tuple(problems)),))


def _component(request: ComponentRequest) -> ComponentState:
    return ComponentState(
        service=request.service, version=request.version, depends_on=request.depends_on
    )


def _aborted(state: ReleaseState, actor: str, reason: str, at: datetime, fleet: Fleet) -> Decision:
    why = f"aborted by {actor}" + (f": {reason}" if reason else "")
    if state.status is ReleaseStatus.QUEUED:
        aborted = _begin_compensating(state, why, actor)
        return _end_compensation(aborted, at)
    if state.status is ReleaseStatus.RUNNING:
        compensating = _begin_compensating(state, why, actor).model_copy(update={"updated_at": at})
        return _continue_compensating(compensating, at, fleet)
    if state.aborted_by is None:
        # Already undoing a failure: workers still in flight now stop at their next batch.
        return Decision(state.model_copy(update={"aborted_by": actor, "updated_at": at}))
    return Decision(state)


def _check_deadlines(state: ReleaseState, now: datetime, fleet: Fleet) -> Decision:
    overdue = [c for c in state.components.values() if c.deadline is not None and c.deadline <= now]
    if not overdue:
        return Decision(state)
    resent: list[Message] = []
    late: list[ComponentState] = []
    for component in overdue:
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
        waited_for = f"{'deploy' if deploying else 'rollback'} of {component.service}"
        reason = f"no word from the worker by {component.deadline.isoformat()} ({waited_for})"
        status = ComponentStatus.TIMED_OUT if deploying else ComponentStatus.ROLLBACK_FAILED
        state = _with(state, component.moved_to(status, reason=reason, deadline=None), now)
        notices.append(
            DeadlinePassed(
                environment=state.environment,
                service=component.service,
                deadline=component.deadline,
                waited_for=waited_for,
            )
        )
    if state.status is ReleaseStatus.RUNNING:
        first = late[0]
        state = _begin_compensating(
            state, f"{first.service}: {state.components[first.service].reason}"
        )
    decision = _continue(state, now, fleet)
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
    return _with(state, updated, now), _command_for(state, component)


def _command_for(state: ReleaseState, component: ComponentState) -> Message:
    if component.status is ComponentStatus.ROLLING_BACK:
        return RollbackComponent(
            environment=state.environment,
            service=component.service,
            from_version=component.version,
            to_versions=component.previous_versions,
        )
    return DeployComponent(
        environment=state.environment, service=component.service, version=component.version
    )


def _advance(state: ReleaseState, payload: Message, at: datetime, fleet: Fleet) -> Decision:
    component = state.components.get(getattr(payload, "service", ""))
    if component is None:
        return Decision(state)  # release-level events: nothing to decide
    match payload:
        case ComponentStarted(previous_versions=previous) if component.status is (
            ComponentStatus.DEPLOYING
        ):
            updated = component.model_copy(
                update={
                    "previous_versions": previous,
                    "deadline": _deadline(component, at, state.environment, fleet),
                }
            )
            return Decision(_with(state, updated, at))
        case ComponentWaiting() if component.deadline is not None:
            return _heard_from(state, component, at, fleet)
        case StepStarted() | StepSucceeded() | StepFailed() if component.deadline is not None:
            # Only word from the command in flight counts: a late step of a deploy that
            # timed out must not hold off the deadline of its rollback.
            if payload.rollback != (component.status is ComponentStatus.ROLLING_BACK):
                return Decision(state)
            return _heard_from(state, component, at, fleet)
        case ComponentDeployed(previous_versions=previous):
            updated = component.moved_to(
                ComponentStatus.DEPLOYED, previous_versions=previous, deadline=None
            )
        case ComponentFailed(reason=reason, restored=restored):
            updated = component.moved_to(
                ComponentStatus.FAILED, reason=reason, restored=restored, deadline=None
            )
        case ComponentRolledBack():
            updated = component.moved_to(ComponentStatus.ROLLED_BACK, deadline=None)
        case ComponentRollbackFailed(reason=reason):
            updated = component.moved_to(
                ComponentStatus.ROLLBACK_FAILED, reason=reason, deadline=None
            )
        case _:
            return Decision(state)
    state = _with(state, updated, at)
    if updated.status is ComponentStatus.FAILED and state.status is ReleaseStatus.RUNNING:
        state = _begin_compensating(state, f"{updated.service}: {updated.reason}")
    return _continue(state, at, fleet)


def _heard_from(
    state: ReleaseState, component: ComponentState, at: datetime, fleet: Fleet
) -> Decision:
    """Word from the worker: it is alive, and the next report is due a step later."""
    deadline = _deadline(component, at, state.environment, fleet)
    return Decision(_with(state, component.model_copy(update={"deadline": deadline}), at))


def _continue(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    if state.status is ReleaseStatus.RUNNING:
        return _continue_forward(state, at, fleet)
    return _continue_compensating(state, at, fleet)


def _deadline(component: ComponentState, at: datetime, environment: str, fleet: Fleet) -> datetime:
    """One step's time from the last word, but never past the component's own limit."""
    service = fleet.service(environment, component.service)
    sent_at = component.sent_at or at
    whole = sent_at + timedelta(seconds=service.component_timeout_s)
    return min(whole, at + timedelta(seconds=service.step_timeout_s))


def _with(state: ReleaseState, component: ComponentState, at: datetime) -> ReleaseState:
    components = {**state.components, component.service: component}
    return state.model_copy(update={"components": components, "updated_at": at})


def _continue_forward(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    if all(c.status is ComponentStatus.DEPLOYED for c in state.components.values()):
        done = _finish(state, ReleaseStatus.SUCCEEDED, at)
        return Decision(done, (ReleaseSucceeded(),))
    started, commands = _start_ready(state, at, fleet)
    return Decision(started, commands)


def _start_ready(
    state: ReleaseState, at: datetime, fleet: Fleet
) -> tuple[ReleaseState, tuple[Message, ...]]:
    """Send every pending component whose dependencies are all deployed."""
    deployed = {s for s, c in state.components.items() if c.status is ComponentStatus.DEPLOYED}
    components = dict(state.components)
    commands: list[Message] = []
    for service, component in state.components.items():
        if component.status is ComponentStatus.PENDING and set(component.depends_on) <= deployed:
            components[service] = _sent(component, ComponentStatus.DEPLOYING, at, state, fleet)
            commands.append(_command_for(state, components[service]))
    return state.model_copy(update={"components": components, "updated_at": at}), tuple(commands)


def _sent(
    component: ComponentState,
    status: ComponentStatus,
    at: datetime,
    state: ReleaseState,
    fleet: Fleet,
) -> ComponentState:
    fresh = component.model_copy(update={"sent_at": at, "resends": 0})
    return fresh.moved_to(status, deadline=_deadline(fresh, at, state.environment, fleet))


def _begin_compensating(
    state: ReleaseState, failure: str, aborted_by: str | None = None
) -> ReleaseState:
    components = {
        service: (
            component.moved_to(ComponentStatus.SKIPPED)
            if component.status is ComponentStatus.PENDING
            else component
        )
        for service, component in state.components.items()
    }
    return state.model_copy(
        update={
            "status": ReleaseStatus.COMPENSATING,
            "failure": failure,
            "aborted_by": aborted_by,
            "components": components,
        }
    )


def _continue_compensating(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    statuses = [c.status for c in state.components.values()]
    if ComponentStatus.DEPLOYING in statuses:
        return Decision(state)  # those in flight finish before anything is undone
    components = dict(state.components)
    commands: list[Message] = []
    for component in _ready_to_roll_back(state):
        components[component.service] = _sent(
            component, ComponentStatus.ROLLING_BACK, at, state, fleet
        )
        commands.append(_command_for(state, components[component.service]))
    state = state.model_copy(update={"components": components})
    if commands or ComponentStatus.ROLLING_BACK in statuses:
        return Decision(state, tuple(commands))
    return _end_compensation(state, at)


def _ready_to_roll_back(state: ReleaseState) -> Iterable[ComponentState]:
    """Deployed (or timed-out) components none of whose dependents still holds them."""
    to_undo = {ComponentStatus.DEPLOYED, ComponentStatus.TIMED_OUT}
    holding = {*to_undo, ComponentStatus.ROLLING_BACK}
    pinned = _pinned_by_failed_rollback(state)
    for component in state.components.values():
        if component.status not in to_undo or component.service in pinned:
            continue
        dependents = (c for c in state.components.values() if component.service in c.depends_on)
        if not any(d.status in holding and d.service not in pinned for d in dependents):
            yield component


def _pinned_by_failed_rollback(state: ReleaseState) -> set[str]:
    """Everything a component that could not be put back depends on, transitively.

    A component could not be put back when its rollback failed, or when it failed and its
    own worker could not restore its hosts: either way some of them may run the new version.
    """
    pinned: set[str] = set()
    frontier = [
        c
        for c in state.components.values()
        if c.status is ComponentStatus.ROLLBACK_FAILED
        or (c.status is ComponentStatus.FAILED and not c.restored)
    ]
    while frontier:
        for dependency in frontier.pop().depends_on:
            if dependency not in pinned:
                pinned.add(dependency)
                frontier.append(state.components[dependency])
    return pinned


def _end_compensation(state: ReleaseState, at: datetime) -> Decision:
    stuck = [
        c
        for c in state.components.values()
        if c.status
        in (ComponentStatus.ROLLBACK_FAILED, ComponentStatus.DEPLOYED, ComponentStatus.TIMED_OUT)
        or (c.status is ComponentStatus.FAILED and not c.restored)
    ]
    if not stuck:
        done = _finish(state, ReleaseStatus.ROLLED_BACK, at)
        return Decision(done, (ReleaseRolledBack(reason=state.failure),))
    attention = tuple(
        f"{c.service}: {c.status} ({c.reason or 'left on ' + c.version})" for c in stuck
    )
    reason = f"{state.failure}; compensation incomplete for " + ", ".join(c.service for c in stuck)
    done = _finish(state, ReleaseStatus.FAILED, at)
    return Decision(done, (ReleaseFailed(reason=reason, needs_attention=attention),))


def _finish(state: ReleaseState, status: ReleaseStatus, at: datetime) -> ReleaseState:
    return state.model_copy(update={"status": status, "finished_at": at, "updated_at": at})
