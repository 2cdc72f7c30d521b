"""The release saga: every decision the coordinator takes, as a pure function.

``decide(state, message, fleet)`` returns the new state and the payloads to send. It does
no I/O, reads no clock and draws no random numbers, so the same inputs always give the
same decision: that is what makes crash-and-resume and duplicate delivery safe, and what
lets the tests walk every path without a broker.

Ordering rules:

* a release that needs an approval waits for it before it queues for its locks;
* a component starts once every component it depends on is deployed (and, if it needs
  one, once it is approved); nothing new starts while the release is paused;
* after the first failure no new component starts; those in flight are waited for;
* then deployed components are rolled back in reverse dependency order: a component is
  rolled back only after everything that depends on it has been rolled back, and
  independent components are rolled back side by side;
* a component whose rollback failed pins what it depends on: those are left as they are
  and named for a human, because undoing them under a component still on its new
  version could break it.

The modules: ``state`` (what the saga knows), ``flow`` (its own motion: starting,
hearing, deadlines, compensation), ``humans`` (approve, reject, pause, resume, retry,
abort).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from orchestrator.contract import (
    ApprovalRefused,
    ApprovalRequested,
    CheckDeadlines,
    Envelope,
    Problem,
    ReleaseAccepted,
    ReleaseRejected,
    RetryRelease,
    StartRelease,
    SubmitRelease,
)
from orchestrator.fleet import Fleet
from orchestrator.plans import InvalidInput, plan_release
from orchestrator.saga.flow import (
    MAX_RESENDS,
    advance,
    check_deadlines,
    continue_release,
    overdue,
)
from orchestrator.saga.humans import HUMAN_COMMANDS, decide_for_human
from orchestrator.saga.state import (
    COMPONENT_TRANSITIONS,
    ComponentState,
    ComponentStatus,
    Decision,
    IllegalTransition,
    ReleaseState,
    ReleaseStatus,
)

__all__ = [
    "COMPONENT_TRANSITIONS",
    "MAX_RESENDS",
    "ComponentState",
    "ComponentStatus",
    "Decision",
    "ReleaseState",
    "ReleaseStatus",
    "decide",
    "overdue",
    "refuse_submission",
]


def decide(state: ReleaseState | None, message: Envelope, fleet: Fleet) -> Decision:
    """The saga's one decision: what the release becomes, and what to send, after ``message``."""
    payload = message.payload
    if state is None:
        if isinstance(payload, SubmitRelease):
            return _submitted(payload, message, fleet)
        return Decision(None)  # an event for a release this store never accepted
    at = message.occurred_at
    try:
        if state.status.is_terminal and not isinstance(payload, RetryRelease):
            # Only a person's retry leaves a terminal state; anything else they ask is
            # answered, so that they know nothing happened.
            if isinstance(payload, HUMAN_COMMANDS):
                reason = f"the release has ended ({state.status})"
                return Decision(state, (ApprovalRefused(command=message.type, reason=reason),))
            return Decision(state)
        if isinstance(payload, HUMAN_COMMANDS):
            return decide_for_human(state, payload, message.actor, at, fleet)
        match payload:
            case StartRelease() if state.status is ReleaseStatus.QUEUED:
                running = state.model_copy(update={"status": ReleaseStatus.RUNNING})
                return continue_release(running, at, fleet)
            case CheckDeadlines(now=now, last_words=last_words):
                return check_deadlines(state, now, last_words, fleet)
        return advance(state, payload, at, fleet)
    except IllegalTransition:
        return Decision(state)  # a duplicate or late report: it changes nothing


def _submitted(request: SubmitRelease, message: Envelope, fleet: Fleet) -> Decision:
    created = _new_release(
        message.release_id, message.actor, message.occurred_at, request.environment, request.reason
    )
    try:
        plan_release(fleet, request)
    except InvalidInput as invalid:
        return _rejected(created, invalid.problems)
    components = {c.name: ComponentState.requested(c) for c in request.components}
    accepted = ReleaseAccepted(
        environment=request.environment, reason=request.reason, components=request.components
    )
    release = created.model_copy(update={"components": components})
    policy = fleet.environments[request.environment].approval
    if request.requires_approval or policy.required:
        waiting = release.model_copy(update={"status": ReleaseStatus.AWAITING_APPROVAL})
        ask = ApprovalRequested(reason=f"releases to {request.environment} need an approval")
        if request.requires_approval:
            ask = ApprovalRequested(reason="the release asks for an approval")
        return Decision(waiting, (accepted, ask))
    # Queued until the coordinator holds the locks of all its services: StartRelease.
    return Decision(release, (accepted,))


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
