"""What people decide about a release: approve, reject, pause, resume, retry, abort.

A command that does not fit the release as it is (approving what waits for nothing,
pausing a release that is undoing itself) changes nothing and says why, in an
:class:`ApprovalRefused` event on the release's timeline, so whoever sent it can see.
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    ApproveRelease,
    Message,
    PauseRelease,
    Problem,
    RejectRelease,
    ReleaseApproved,
    ReleasePaused,
    ReleaseRejected,
    ReleaseResumed,
    ReleaseRetried,
    ResumeRelease,
    RetryRelease,
)
from orchestrator.fleet import Fleet
from orchestrator.saga.flow import (
    START_APPROVAL,
    begin_compensating,
    continue_release,
    end_compensation,
    rearm_deadlines,
    with_component,
)
from orchestrator.saga.state import ComponentState, ComponentStatus, Decision, ReleaseState
from orchestrator.saga.state import ReleaseStatus as Status

__all__ = ["HUMAN_COMMANDS", "decide_for_human"]

HUMAN_COMMANDS = (
    AbortRelease,
    ApproveRelease,
    RejectRelease,
    PauseRelease,
    ResumeRelease,
    RetryRelease,
)


def decide_for_human(
    state: ReleaseState, payload: Message, actor: str, at: datetime, fleet: Fleet
) -> Decision:
    match payload:
        case AbortRelease(reason=reason):
            return _aborted(state, actor, reason, at, fleet)
        case ApproveRelease():
            return _approved(state, payload, actor, at, fleet)
        case RejectRelease(reason=reason):
            return _rejected(state, actor, reason, at, fleet)
        case PauseRelease(reason=reason):
            return _paused(state, actor, reason, at)
        case ResumeRelease():
            return _resumed(state, at, fleet)
        case RetryRelease():
            return _retried(state, at)
    raise TypeError(f"not a human's command: {type(payload).__name__}")


def _refused(state: ReleaseState, command: str, reason: str) -> Decision:
    return Decision(state, (ApprovalRefused(command=command, reason=reason),))


def _aborted(state: ReleaseState, actor: str, reason: str, at: datetime, fleet: Fleet) -> Decision:
    why = f"aborted by {actor}" + (f": {reason}" if reason else "")
    if state.status in (Status.QUEUED, Status.AWAITING_APPROVAL):
        return end_compensation(begin_compensating(state, why, at, fleet, actor), at)
    if state.status in (Status.RUNNING, Status.PAUSED):
        compensating = begin_compensating(state, why, at, fleet, actor)
        return continue_release(compensating.model_copy(update={"updated_at": at}), at, fleet)
    if state.aborted_by is None:
        # Already undoing a failure: workers still in flight now stop at their next batch.
        return Decision(state.model_copy(update={"aborted_by": actor, "updated_at": at}))
    return Decision(state)


def _approved(
    state: ReleaseState, payload: ApproveRelease, actor: str, at: datetime, fleet: Fleet
) -> Decision:
    command = "ApproveRelease"
    if not state.waiting_for_approval:
        return _refused(
            state, command, f"nothing waits for approval (the release is {state.status})"
        )
    policy = fleet.environments[state.environment].approval
    if policy.separate_approver and actor == state.requested_by:
        reason = f"{actor} asked for this release; {state.environment} needs another approver"
        return _refused(state, command, reason)
    if state.status is Status.AWAITING_APPROVAL:
        if payload.component is not None:
            return _refused(state, command, "the release itself waits for approval first")
        approved = state.model_copy(
            update={"status": Status.QUEUED, "approved_by": actor, "updated_at": at}
        )
        return Decision(
            approved, (ReleaseApproved(approved=("release",), comment=payload.comment),)
        )
    chosen = [
        c
        for c in state.components.values()
        if (c.status is ComponentStatus.AWAITING_APPROVAL or c.held)
        and payload.component in (None, c.name)
    ]
    if not chosen:
        return _refused(state, command, f"{payload.component} does not wait for approval")
    for component in chosen:
        state = with_component(state, _let_go(component), at)
    if state.paused_by is None and not any(c.held for c in state.components.values()):
        state = state.model_copy(update={"status": Status.RUNNING})
    state = rearm_deadlines(state, at, fleet)
    decision = continue_release(state, at, fleet)
    note = ReleaseApproved(approved=tuple(c.name for c in chosen), comment=payload.comment)
    return Decision(decision.state, (note, *decision.outgoing))


def _let_go(component: ComponentState) -> ComponentState:
    """The approval a component waited for: to start, or to go on past a hold."""
    given = component.held or START_APPROVAL
    return component.model_copy(update={"held": "", "approved": (*component.approved, given)})


def _rejected(state: ReleaseState, actor: str, reason: str, at: datetime, fleet: Fleet) -> Decision:
    why = f"rejected by {actor}" + (f": {reason}" if reason else "")
    if state.status is Status.AWAITING_APPROVAL:
        rejected = state.model_copy(
            update={"status": Status.REJECTED, "failure": why, "finished_at": at, "updated_at": at}
        )
        return Decision(rejected, (ReleaseRejected(problems=(Problem(path="", reason=why),)),))
    if not state.waiting_for_approval:
        return _refused(state, "RejectRelease", f"nothing waits for approval ({state.status})")
    # Saying no to a component (or to a canary) undoes the release, as an abort does.
    compensating = begin_compensating(state, why, at, fleet, actor)
    return continue_release(compensating.model_copy(update={"updated_at": at}), at, fleet)


def _paused(state: ReleaseState, actor: str, reason: str, at: datetime) -> Decision:
    if state.status not in (Status.RUNNING, Status.PAUSED) or state.paused_by is not None:
        already = state.paused_by is not None
        why = (
            f"already paused by {state.paused_by}" if already else f"the release is {state.status}"
        )
        return _refused(state, "PauseRelease", why)
    # Every clock stops: a worker waits at its next batch for as long as the pause lasts.
    components = {n: c.model_copy(update={"deadline": None}) for n, c in state.components.items()}
    paused = state.model_copy(
        update={
            "status": Status.PAUSED,
            "paused_by": actor,
            "components": components,
            "updated_at": at,
        }
    )
    return Decision(paused, (ReleasePaused(reason=reason or f"paused by {actor}"),))


def _resumed(state: ReleaseState, at: datetime, fleet: Fleet) -> Decision:
    if state.paused_by is None:
        return _refused(state, "ResumeRelease", f"the release is not paused ({state.status})")
    held = any(c.held for c in state.components.values())
    resumed = state.model_copy(
        update={"paused_by": None, "status": Status.PAUSED if held else Status.RUNNING}
    )
    decision = continue_release(rearm_deadlines(resumed, at, fleet), at, fleet)
    return Decision(decision.state, (ReleaseResumed(), *decision.outgoing))


_RETRYABLE = (Status.ROLLED_BACK, Status.FAILED)


def _retried(state: ReleaseState, at: datetime) -> Decision:
    """Run the release again from where it stopped: what is still deployed stays so.

    It queues for its locks again like a new release. Its workers start a new attempt
    (journals and outcomes are kept per attempt), so nothing of the first run is replayed.
    """
    if state.status not in _RETRYABLE:
        reason = f"only a release that failed or was rolled back can be retried ({state.status})"
        return _refused(state, "RetryRelease", reason)
    attempt = state.attempt + 1
    again = {
        name: component.moved_to(
            ComponentStatus.PENDING,
            attempt=attempt,
            reason="",
            restored=True,
            resends=0,
            sent_at=None,
            deadline=None,
            held="",
        )
        for name, component in state.components.items()
        if component.status is not ComponentStatus.DEPLOYED
    }
    retried = state.model_copy(
        update={
            "status": Status.QUEUED,
            "components": {**state.components, **again},
            "attempt": attempt,
            "failure": "",
            "aborted_by": None,
            "finished_at": None,
            "updated_at": at,
        }
    )
    return Decision(retried, (ReleaseRetried(attempt=attempt, components=tuple(again)),))
