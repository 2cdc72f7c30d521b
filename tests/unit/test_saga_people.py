"""What people decide about a release, decision by decision: approvals (and who may give
them), rejection, pause and resume, a canary held for a human, retry, and flag flips."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.contract import (
    ApprovalRefused,
    ApprovalRequested,
    ApproveRelease,
    ComponentHeld,
    ComponentRequest,
    DeployComponent,
    FlagToggled,
    FlagToggleFailed,
    Message,
    PauseRelease,
    RejectRelease,
    ReleaseApproved,
    ReleasePaused,
    ReleaseRejected,
    ReleaseResumed,
    ReleaseRetried,
    ResumeRelease,
    RetryRelease,
    ToggleFlag,
)
from orchestrator.saga import ComponentStatus, ReleaseStatus
from tests.unit.builders import (
    ACTOR,
    ENVIRONMENT,
    OPERATOR,
    Release,
    component,
    deployed,
    deploys,
    failed,
    rollbacks,
    rolled_back,
)

APPROVER = "bob"


def refusal(outgoing: tuple[Message, ...]) -> str:
    (message,) = outgoing
    assert isinstance(message, ApprovalRefused)
    return message.reason


def flip(service: str, flag: str, *depends_on: str, enabled: bool = True) -> ComponentRequest:
    return ComponentRequest(service=service, flag=flag, enabled=enabled, depends_on=depends_on)


def flipped(service: str, flag: str, *, undo: bool = False, enabled: bool = True) -> FlagToggled:
    return FlagToggled(
        environment=ENVIRONMENT,
        service=service,
        flag=flag,
        enabled=enabled,
        previously=not enabled,
        undo=undo,
    )


# --- approval before the release starts ---------------------------------------------------


def test_an_environment_that_wants_approval_holds_the_release_before_its_locks() -> None:
    release = Release(component("db"), approval={"required": True}, start=False)

    assert release.status is ReleaseStatus.AWAITING_APPROVAL
    assert [type(m) for m in release.accepted][1:] == [ApprovalRequested]
    assert release.start() == ()  # the coordinator does not start what waits for a human
    assert release.status is ReleaseStatus.AWAITING_APPROVAL

    (note,) = release.send(ApproveRelease(comment="go"), actor=APPROVER)

    assert note == ReleaseApproved(approved=("release",), comment="go")
    assert release.status is ReleaseStatus.QUEUED  # now it queues for its locks
    assert release.release.approved_by == APPROVER
    assert deploys(release.start()) == ["db"]


def test_a_submission_may_ask_for_approval_itself() -> None:
    release = Release(component("db"), requires_approval=True, start=False)

    assert release.status is ReleaseStatus.AWAITING_APPROVAL


def test_the_requester_may_not_approve_where_the_environment_separates_duties() -> None:
    release = Release(
        component("db"), approval={"required": True, "separate_approver": True}, start=False
    )

    reason = refusal(release.send(ApproveRelease(), actor=ACTOR))

    assert f"{ACTOR} asked for this release" in reason
    assert release.status is ReleaseStatus.AWAITING_APPROVAL
    release.send(ApproveRelease(), actor=APPROVER)
    assert release.status is ReleaseStatus.QUEUED


def test_without_separation_the_requester_may_approve() -> None:
    release = Release(component("db"), approval={"required": True}, start=False)

    release.send(ApproveRelease(), actor=ACTOR)

    assert release.status is ReleaseStatus.QUEUED


def test_rejecting_a_release_before_it_starts_ends_it_with_nothing_run() -> None:
    release = Release(component("db"), approval={"required": True}, start=False)

    (note,) = release.send(RejectRelease(reason="freeze"), actor=APPROVER)

    assert isinstance(note, ReleaseRejected)
    assert release.status is ReleaseStatus.REJECTED
    assert release.release.failure == f"rejected by {APPROVER}: freeze"
    assert deploys(release.sent) == []


def test_approving_what_waits_for_nothing_is_refused_with_the_reason() -> None:
    release = Release(component("db"))

    assert "nothing waits for approval" in refusal(release.send(ApproveRelease()))


# --- approval of one component ------------------------------------------------------------


def test_a_component_that_needs_approval_waits_while_the_others_go_on() -> None:
    gated = ComponentRequest(service="api", version="2.0.0", requires_approval=True)
    release = Release(component("db"), gated)

    assert deploys(release.first) == ["db"]
    (asked,) = [m for m in release.first if isinstance(m, ApprovalRequested)]
    assert asked.component == "api"
    assert release.component("api") is ComponentStatus.AWAITING_APPROVAL
    assert release.release.waiting_for_approval == ["api (to start)"]

    outgoing = release.send(ApproveRelease(component="api"), actor=APPROVER)

    assert deploys(outgoing) == ["api"]
    assert release.part("api").approved == ("start",)


def test_a_component_waiting_for_approval_is_skipped_when_the_release_fails() -> None:
    gated = ComponentRequest(service="api", version="2.0.0", requires_approval=True)
    release = Release(component("db"), gated)

    release.send(failed("db"))

    assert release.component("api") is ComponentStatus.SKIPPED
    assert release.status is ReleaseStatus.ROLLED_BACK


# --- pause and resume ---------------------------------------------------------------------


def test_a_paused_release_starts_nothing_and_its_clocks_stop() -> None:
    release = Release(component("db"), component("api", "db"), step_timeout_s=10)

    (note,) = release.send(PauseRelease(reason="incident"), actor=OPERATOR)
    assert note == ReleasePaused(reason="incident")
    assert release.status is ReleaseStatus.PAUSED
    assert release.part("db").deadline is None  # a pause is nobody's fault

    # db's worker finishes the batch it was in; api does not start.
    release.report("db")
    assert release.check_deadlines(release.now + timedelta(seconds=600)) == ()  # no clock
    assert release.part("db").deadline is None
    assert deploys(release.send(deployed("db"))) == []
    assert release.release.next_deadline is None

    outgoing = release.send(ResumeRelease(), wait=3600, actor=OPERATOR)

    assert isinstance(outgoing[0], ReleaseResumed)
    assert deploys(outgoing) == ["api"]
    assert release.status is ReleaseStatus.RUNNING
    assert release.deadline("api") == release.now + timedelta(seconds=10)


def test_resume_rearms_the_clock_of_a_component_still_in_flight() -> None:
    release = Release(component("db"), step_timeout_s=10)
    release.send(PauseRelease(), actor=OPERATOR)

    release.send(ResumeRelease(), wait=600, actor=OPERATOR)

    assert release.deadline("db") == release.now + timedelta(seconds=10)


def test_pausing_twice_or_resuming_what_runs_is_refused() -> None:
    release = Release(component("db"))
    assert "not paused" in refusal(release.send(ResumeRelease()))
    release.send(PauseRelease(), actor=OPERATOR)

    assert f"already paused by {OPERATOR}" in refusal(release.send(PauseRelease()))


def test_a_paused_release_can_be_aborted() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.report("api")
    release.send(PauseRelease(), actor=OPERATOR)

    release.abort()

    assert release.status is ReleaseStatus.COMPENSATING
    assert release.release.paused_by is None
    assert release.part("api").deadline is not None  # its worker must be heard again
    release.send(failed("api"))
    assert rollbacks(release.sent) == ["db"]


# --- a canary held for a human ------------------------------------------------------------


def held(service: str, hold: str = "analysis-1") -> ComponentHeld:
    return ComponentHeld(environment=ENVIRONMENT, service=service, hold=hold, reason="unsure")


def test_an_inconclusive_analysis_pauses_the_release_until_approved() -> None:
    release = Release(component("db"), component("api"), step_timeout_s=10)

    (asked,) = release.send(held("api"))

    assert asked == ApprovalRequested(component="api", reason="unsure")
    assert release.status is ReleaseStatus.PAUSED
    assert release.part("api").held == "analysis-1"
    assert release.part("api").deadline is None
    assert release.part("db").deadline is not None  # only the held one waits for a human

    (note,) = release.send(ApproveRelease(), wait=900, actor=APPROVER)

    assert note == ReleaseApproved(approved=("api",))
    assert release.status is ReleaseStatus.RUNNING
    assert release.part("api").approved == ("analysis-1",)
    assert release.deadline("api") == release.now + timedelta(seconds=10)


def test_a_held_component_said_again_or_after_its_approval_changes_nothing() -> None:
    release = Release(component("api"))
    release.send(held("api"))
    before = release.release
    assert release.send(held("api")) == ()
    assert release.release.components == before.components

    release.send(ApproveRelease(), actor=APPROVER)
    assert release.send(held("api")) == ()  # a late copy from before the approval
    assert release.status is ReleaseStatus.RUNNING


def test_rejecting_a_held_canary_rolls_the_release_back() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.send(held("api"))

    release.send(RejectRelease(reason="too risky"), actor=APPROVER)

    assert release.status is ReleaseStatus.COMPENSATING
    assert release.release.aborted_by == APPROVER  # the worker stops at its next look
    release.send(failed("api"))
    assert rollbacks(release.sent) == ["db"]


# --- retry --------------------------------------------------------------------------------


def test_a_rolled_back_release_is_retried_as_a_new_attempt() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.send(failed("api"))
    release.send(rolled_back("db"))
    assert release.status is ReleaseStatus.ROLLED_BACK

    (note,) = release.send(RetryRelease(reason="api fixed"), actor=OPERATOR)

    assert note == ReleaseRetried(attempt=2, components=("db", "api"))
    assert release.status is ReleaseStatus.QUEUED  # queues for its locks again
    assert release.release.failure == ""
    assert deploys(release.start()) == ["db"]
    (command,) = [m for m in release.sent if isinstance(m, DeployComponent)][-1:]
    assert command.attempt == 2  # workers keep a new journal: nothing is replayed


def test_retry_keeps_what_is_still_deployed() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.send(failed("api"))
    release.send(rolled_back("db"))
    release.send(RetryRelease(), actor=OPERATOR)
    release.start()
    release.send(deployed("db"))
    release.send(failed("api", restored=False))  # api's hosts stay half moved; db is pinned
    assert release.status is ReleaseStatus.FAILED

    release.send(RetryRelease(), actor=OPERATOR)
    outgoing = release.start()

    assert release.component("db") is ComponentStatus.DEPLOYED
    assert deploys(outgoing) == ["api"]  # carries on from where it stopped
    assert release.part("api").attempt == 3


def test_only_an_ended_release_that_did_not_succeed_can_be_retried() -> None:
    release = Release(component("db"))

    assert "(running)" in refusal(release.send(RetryRelease()))
    release.send(deployed("db"))
    assert release.status is ReleaseStatus.SUCCEEDED
    assert "(succeeded)" in refusal(release.send(RetryRelease()))


# --- flag flips ---------------------------------------------------------------------------


def test_a_flag_flip_goes_after_the_deploy_it_depends_on_and_is_undone_first() -> None:
    release = Release(component("api"), flip("api", "new-flow", "api"), component("db"))

    assert deploys(release.first) == ["api", "db"]
    outgoing = release.send(deployed("api"))
    (command,) = outgoing
    assert command == ToggleFlag(
        environment=ENVIRONMENT, service="api", flag="new-flow", enabled=True
    )
    release.send(flipped("api", "new-flow"))
    assert release.component("api.new-flow") is ComponentStatus.DEPLOYED

    release.send(failed("db"))

    (undo,) = [m for m in release.sent if isinstance(m, ToggleFlag) and m.undo]
    assert undo.flag == "new-flow"
    assert rollbacks(release.sent) == []  # api waits for its flag to be turned back first
    release.send(flipped("api", "new-flow", undo=True, enabled=False))
    assert rollbacks(release.sent) == ["api"]


def test_a_flip_that_fails_fails_the_release_like_any_component() -> None:
    release = Release(component("api"), flip("api", "new-flow", "api"))
    release.send(deployed("api"))

    release.send(
        FlagToggleFailed(environment=ENVIRONMENT, service="api", flag="new-flow", reason="down")
    )

    assert release.component("api.new-flow") is ComponentStatus.FAILED
    assert rollbacks(release.sent) == ["api"]
