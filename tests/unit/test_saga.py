"""The release saga, decision by decision: queueing, ordering, compensation, duplicates,
rejection. Aborts, deadlines and the property over random runs have files of their own."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    CheckDeadlines,
    ComponentRequest,
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
    SubmitRelease,
)
from orchestrator.fleet import Fleet
from orchestrator.saga import (
    ComponentStatus,
    Decision,
    ReleaseState,
    ReleaseStatus,
    decide,
    refuse_submission,
)
from tests.unit.builders import (
    ENVIRONMENT,
    NEW_VERSION,
    PREVIOUS,
    RELEASE_ID,
    T0,
    Release,
    component,
    deployed,
    deploys,
    event,
    failed,
    fleet,
    later,
    opening,
    rollback_failed,
    rollbacks,
    rolled_back,
    started,
    step_started,
    submit,
)

# --- queued until the coordinator starts it ----------------------------------------------


def test_valid_submission_is_queued_accepted_and_starts_nothing() -> None:
    release = Release(component("db"), component("api", "db"), component("web"), start=False)

    assert release.accepted == (
        ReleaseAccepted(
            environment=ENVIRONMENT,
            reason="test",
            components=(component("db"), component("api", "db"), component("web")),
        ),
    )
    assert release.status is ReleaseStatus.QUEUED
    assert {release.component(s) for s in ("db", "api", "web")} == {ComponentStatus.PENDING}
    assert all(c.deadline is None for c in release.release.components.values())
    assert release.release.next_deadline is None
    assert deploys(release.sent) == []


@pytest.mark.parametrize(
    "early",
    [
        deployed("db"),
        failed("db"),
        started("db"),
        step_started("db"),
        rolled_back("db"),
        CheckDeadlines(now=later(10 * 86_400)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_queued_release_ignores_reports_and_deadline_checks(early: Message) -> None:
    release = Release(component("db"), component("api", "db"), start=False)
    queued = release.state

    assert release.send(early) == ()
    assert release.state == queued
    assert deploys(release.start()) == ["db"]


def test_start_release_runs_it_and_deploys_what_is_ready() -> None:
    release = Release(component("db"), component("api", "db"), component("web"), start=False)

    assert release.start() == (
        DeployComponent(environment=ENVIRONMENT, service="db", version=NEW_VERSION),
        DeployComponent(environment=ENVIRONMENT, service="web", version=NEW_VERSION),
    )
    assert release.status is ReleaseStatus.RUNNING
    assert release.component("api") is ComponentStatus.PENDING
    assert release.release.updated_at == later(2)


def test_start_release_twice_is_harmless() -> None:
    release = Release(component("db"), component("api", "db"))
    running = release.state

    assert release.start() == ()
    assert release.state == running
    release.send(deployed("db"))
    halfway = release.state
    assert release.start() == ()
    assert release.state == halfway
    assert deploys(release.sent) == ["db", "api"]


def test_start_release_after_the_end_changes_nothing() -> None:
    release = Release(component("api"))
    release.send(deployed("api"))
    done = release.state

    assert release.start() == ()
    assert release.state == done


# --- starting in dependency order ---------------------------------------------------------


def test_components_without_dependencies_all_start_when_the_release_starts() -> None:
    release = Release(component("api"), component("web"), component("jobs"))

    assert deploys(release.first) == ["api", "web", "jobs"]
    assert len(release.first) == 3
    assert release.status is ReleaseStatus.RUNNING
    assert {release.component(s) for s in ("api", "web", "jobs")} == {ComponentStatus.DEPLOYING}


def test_release_accepted_repeats_the_request() -> None:
    components = (component("db"), component("api", "db"))
    release = Release(*components)

    assert release.accepted == (
        ReleaseAccepted(environment=ENVIRONMENT, reason="test", components=components),
    )


def test_submission_records_who_asked_when_and_why() -> None:
    release = Release(component("api"))

    assert release.release.id == RELEASE_ID
    assert release.release.requested_by == "ci"
    assert release.release.environment == ENVIRONMENT
    assert release.release.reason == "test"
    assert release.release.created_at == later(1)
    assert release.release.finished_at is None
    assert release.release.aborted_by is None


def test_deploy_command_names_the_environment_service_and_version() -> None:
    release = Release(component("api", version="3.1.4"))

    assert release.first == (
        DeployComponent(environment=ENVIRONMENT, service="api", version="3.1.4"),
    )


def test_chain_starts_each_component_only_once_the_one_before_is_deployed() -> None:
    release = Release(component("db"), component("api", "db"), component("web", "api"))

    assert deploys(release.first) == ["db"]
    assert release.component("api") is ComponentStatus.PENDING
    assert release.send(deployed("db")) == (
        DeployComponent(environment=ENVIRONMENT, service="api", version=NEW_VERSION),
    )
    assert deploys(release.send(deployed("api"))) == ["web"]
    assert release.send(deployed("web")) == (ReleaseSucceeded(),)
    assert release.status is ReleaseStatus.SUCCEEDED
    assert release.release.finished_at == later(5)


def test_diamond_starts_both_middles_together_and_the_top_after_both() -> None:
    release = Release(
        component("db"),
        component("api", "db"),
        component("auth", "db"),
        component("web", "api", "auth"),
    )

    assert deploys(release.first) == ["db"]
    assert deploys(release.send(deployed("db"))) == ["api", "auth"]
    assert release.send(deployed("auth")) == ()
    assert release.component("web") is ComponentStatus.PENDING
    assert deploys(release.send(deployed("api"))) == ["web"]
    assert release.send(deployed("web")) == (ReleaseSucceeded(),)
    assert release.status is ReleaseStatus.SUCCEEDED


def test_component_listed_before_its_dependency_still_waits_for_it() -> None:
    release = Release(component("web", "api"), component("api"))

    assert deploys(release.first) == ["api"]
    assert deploys(release.send(deployed("api"))) == ["web"]


def test_independent_chains_progress_in_parallel() -> None:
    release = Release(
        component("db"), component("api", "db"), component("cache"), component("web", "cache")
    )

    assert deploys(release.first) == ["db", "cache"]
    assert deploys(release.send(deployed("cache"))) == ["web"]
    assert deploys(release.send(deployed("db"))) == ["api"]


def test_report_about_a_service_not_in_the_release_changes_nothing() -> None:
    release = Release(component("api"), services=["api", "web"])
    before = release.state

    assert release.send(deployed("web")) == ()
    assert release.state == before


# --- a failure while others are in flight -------------------------------------------------


def test_failure_starts_nothing_new_and_waits_for_siblings_in_flight() -> None:
    release = Release(component("api"), component("web"), component("jobs", "api"))

    assert release.send(failed("web")) == ()
    assert release.status is ReleaseStatus.COMPENSATING
    assert release.component("jobs") is ComponentStatus.SKIPPED
    assert release.component("api") is ComponentStatus.DEPLOYING
    assert release.state is not None
    assert release.state.failure == "web: verify failed on h2"


def test_sibling_that_deploys_after_the_failure_is_rolled_back_and_nothing_starts() -> None:
    release = Release(component("api"), component("web"), component("jobs", "api"))
    release.send(failed("web"))

    outgoing = release.send(deployed("api"))

    assert deploys(outgoing) == []
    assert outgoing == (
        RollbackComponent(
            environment=ENVIRONMENT, service="api", from_version=NEW_VERSION, to_versions=PREVIOUS
        ),
    )
    assert release.send(rolled_back("api")) == (
        ReleaseRolledBack(reason="web: verify failed on h2"),
    )
    assert release.status is ReleaseStatus.ROLLED_BACK
    assert release.component("web") is ComponentStatus.FAILED
    assert release.component("jobs") is ComponentStatus.SKIPPED
    assert "jobs" not in deploys(release.sent)


def test_sibling_that_fails_after_the_failure_is_not_rolled_back() -> None:
    release = Release(component("api"), component("web"), component("jobs"))
    release.send(failed("api"))

    assert release.send(failed("web")) == ()
    assert rollbacks(release.send(deployed("jobs"))) == ["jobs"]
    assert isinstance(release.send(rolled_back("jobs"))[0], ReleaseRolledBack)
    assert rollbacks(release.sent) == ["jobs"]
    assert release.status is ReleaseStatus.ROLLED_BACK


def test_compensation_waits_until_every_component_in_flight_has_answered() -> None:
    release = Release(component("api"), component("web"), component("jobs"))
    release.send(failed("api"))

    assert release.send(deployed("web")) == ()
    assert release.component("web") is ComponentStatus.DEPLOYED
    assert rollbacks(release.send(deployed("jobs"))) == ["web", "jobs"]


def test_failure_after_others_deployed_rolls_them_back_with_their_previous_versions() -> None:
    release = Release(component("api"), component("web", "api"))
    release.send(deployed("api", previous={"h1": "0.9", "h2": "0.8"}))

    assert release.send(failed("web")) == (
        RollbackComponent(
            environment=ENVIRONMENT,
            service="api",
            from_version=NEW_VERSION,
            to_versions={"h1": "0.9", "h2": "0.8"},
        ),
    )


# --- compensation order -------------------------------------------------------------------


def test_chain_is_rolled_back_from_the_top_down() -> None:
    release = Release(component("db"), component("api", "db"), component("web", "api"))
    release.send(deployed("db"))
    release.send(deployed("api"))

    assert rollbacks(release.send(failed("web"))) == ["api"]
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert rollbacks(release.send(rolled_back("api"))) == ["db"]
    assert release.send(rolled_back("db")) == (
        ReleaseRolledBack(reason="web: verify failed on h2"),
    )
    assert release.status is ReleaseStatus.ROLLED_BACK


def test_diamond_rolls_back_both_middles_together_and_the_bottom_after_both() -> None:
    release = Release(
        component("db"),
        component("api", "db"),
        component("auth", "db"),
        component("web", "api", "auth"),
    )
    release.send(deployed("db"))
    release.send(deployed("api"))
    release.send(deployed("auth"))

    assert rollbacks(release.send(failed("web"))) == ["api", "auth"]
    assert release.send(rolled_back("auth")) == ()
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert rollbacks(release.send(rolled_back("api"))) == ["db"]
    assert isinstance(release.send(rolled_back("db"))[0], ReleaseRolledBack)


def test_independent_components_are_rolled_back_side_by_side() -> None:
    release = Release(component("api"), component("web"), component("jobs"), component("mail"))
    release.send(deployed("api"))
    release.send(deployed("web"))
    release.send(deployed("mail"))

    assert rollbacks(release.send(failed("jobs"))) == ["api", "web", "mail"]


def test_only_deployed_dependents_hold_back_a_rollback() -> None:
    # auth never started (skipped) and jobs failed: neither holds db back; api does.
    release = Release(
        component("db"),
        component("api", "db"),
        component("jobs", "db"),
        component("auth", "jobs"),
    )
    release.send(deployed("db"))
    release.send(deployed("api"))

    assert deploys(release.send(failed("jobs"))) == []
    assert rollbacks(release.sent) == ["api"]
    assert release.component("auth") is ComponentStatus.SKIPPED
    assert rollbacks(release.send(rolled_back("api"))) == ["db"]


def test_rollback_of_a_dependency_waits_for_every_dependent_still_rolling_back() -> None:
    release = Release(
        component("db"), component("api", "db"), component("web", "db"), component("mail", "db")
    )
    release.send(deployed("db"))
    release.send(deployed("api"))
    release.send(deployed("web"))

    assert rollbacks(release.send(failed("mail"))) == ["api", "web"]
    assert release.send(rolled_back("api")) == ()
    assert rollbacks(release.send(rolled_back("web"))) == ["db"]


# --- failure at the very start ------------------------------------------------------------


def test_failure_of_the_first_component_ends_rolled_back_at_once() -> None:
    release = Release(component("db"), component("api", "db"))

    assert release.send(failed("db")) == (ReleaseRolledBack(reason="db: verify failed on h2"),)
    assert release.status is ReleaseStatus.ROLLED_BACK
    assert release.component("api") is ComponentStatus.SKIPPED
    assert release.release.finished_at == later(3)
    assert rollbacks(release.sent) == []


def test_failure_of_the_only_component_ends_rolled_back_at_once() -> None:
    release = Release(component("api"))

    assert release.send(failed("api")) == (ReleaseRolledBack(reason="api: verify failed on h2"),)
    assert release.status is ReleaseStatus.ROLLED_BACK


# --- compensation that cannot finish ------------------------------------------------------


def test_failed_rollback_leaves_what_it_depends_on_and_names_it_for_a_human() -> None:
    release = Release(component("db"), component("api", "db"), component("web", "api"))
    release.send(deployed("db"))
    release.send(deployed("api"))
    release.send(failed("web"))

    (outcome,) = release.send(rollback_failed("api"))

    assert isinstance(outcome, ReleaseFailed)
    assert rollbacks(release.sent) == ["api"]
    assert release.status is ReleaseStatus.FAILED
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert release.component("api") is ComponentStatus.ROLLBACK_FAILED
    named = [entry.split(":")[0] for entry in outcome.needs_attention]
    assert sorted(named) == ["api", "db"]
    assert "h2 did not come back" in " ".join(outcome.needs_attention)
    assert outcome.reason.startswith("web: verify failed on h2")


def test_failed_rollback_pins_its_dependencies_transitively() -> None:
    release = Release(
        component("db"),
        component("cache", "db"),
        component("api", "cache"),
        component("web", "api"),
    )
    for service in ("db", "cache", "api"):
        release.send(deployed(service))
    release.send(failed("web"))

    (outcome,) = release.send(rollback_failed("api"))

    assert isinstance(outcome, ReleaseFailed)
    assert rollbacks(release.sent) == ["api"]
    assert sorted(e.split(":")[0] for e in outcome.needs_attention) == ["api", "cache", "db"]


def test_failed_rollback_waits_for_other_rollbacks_and_spares_only_what_it_pins() -> None:
    release = Release(component("db"), component("api", "db"), component("mail"), component("web"))
    release.send(deployed("db"))
    release.send(deployed("api"))
    release.send(deployed("mail"))
    assert rollbacks(release.send(failed("web"))) == ["api", "mail"]

    assert release.send(rollback_failed("api")) == ()
    assert not release.status.is_terminal
    (outcome,) = release.send(rolled_back("mail"))

    assert isinstance(outcome, ReleaseFailed)
    assert release.status is ReleaseStatus.FAILED
    assert release.component("mail") is ComponentStatus.ROLLED_BACK
    assert sorted(e.split(":")[0] for e in outcome.needs_attention) == ["api", "db"]


def test_component_whose_own_put_back_failed_ends_the_release_failed() -> None:
    release = Release(component("api"), component("web"))
    release.send(deployed("web"))

    assert rollbacks(release.send(failed("api", restored=False))) == ["web"]
    (outcome,) = release.send(rolled_back("web"))

    assert isinstance(outcome, ReleaseFailed)
    assert release.status is ReleaseStatus.FAILED
    assert [e.split(":")[0] for e in outcome.needs_attention] == ["api"]


def test_first_component_whose_put_back_failed_ends_failed_at_once() -> None:
    release = Release(component("api"), component("web", "api"))

    (outcome,) = release.send(failed("api", restored=False))

    assert isinstance(outcome, ReleaseFailed)
    assert outcome.needs_attention == ("api: failed (verify failed on h2)",)
    assert release.status is ReleaseStatus.FAILED


def test_component_whose_put_back_failed_pins_what_it_depends_on() -> None:
    # web's hosts may still run the new version: undoing db beneath them could break them.
    release = Release(component("db"), component("web", "db"))
    release.send(deployed("db"))

    (outcome,) = release.send(failed("web", restored=False))

    assert isinstance(outcome, ReleaseFailed)
    assert rollbacks(release.sent) == []
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert sorted(e.split(":")[0] for e in outcome.needs_attention) == ["db", "web"]


# --- duplicates, late and stray messages --------------------------------------------------


SCENARIOS: dict[str, tuple[tuple[ComponentRequest, ...], tuple[Message, ...]]] = {
    "diamond succeeds": (
        (
            component("db"),
            component("api", "db"),
            component("auth", "db"),
            component("web", "api", "auth"),
        ),
        (started("db"), deployed("db"), deployed("auth"), deployed("api"), deployed("web")),
    ),
    "failure compensated": (
        (component("db"), component("api", "db"), component("web", "db"), component("jobs", "api")),
        (
            deployed("db"),
            failed("web"),
            deployed("api"),
            rolled_back("api"),
            rolled_back("db"),
        ),
    ),
    "rollback fails": (
        (component("db"), component("api", "db"), component("web")),
        (deployed("db"), deployed("api"), failed("web"), rollback_failed("api")),
    ),
    "aborted while running": (
        (component("db"), component("api", "db"), component("web")),
        (
            deployed("db"),
            AbortRelease(reason="stop"),
            deployed("web"),
            failed("api"),
            rolled_back("web"),
            rolled_back("db"),
        ),
    ),
    "deploy times out": (
        (component("db"), component("api", "db"), component("mail")),
        (
            started("db"),
            deployed("mail"),
            CheckDeadlines(now=later(10_000)),
            deployed("db"),
            rolled_back("db"),
            rolled_back("mail"),
        ),
    ),
    "rollback times out": (
        (component("db"), component("web")),
        (deployed("db"), failed("web"), CheckDeadlines(now=later(10_000)), rolled_back("db")),
    ),
    "deploy resent, then answered": (
        (component("db"),),
        (CheckDeadlines(now=later(300)), CheckDeadlines(now=later(600)), deployed("db")),
    ),
    "deploy resent, then timed out": (
        (component("db"), component("mail")),
        (
            deployed("mail"),
            CheckDeadlines(now=later(300)),
            CheckDeadlines(now=later(600)),
            CheckDeadlines(now=later(900)),
            rolled_back("db"),
            rolled_back("mail"),
        ),
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_message_delivered_twice_gives_the_same_outcome(name: str) -> None:
    components, replies = SCENARIOS[name]
    fleet_ = fleet(*(c.service for c in components))
    messages = [*opening(*components, at=T0)]
    messages += [event(reply, at=later(i + 1)) for i, reply in enumerate(replies)]

    once = _run(fleet_, messages)
    twice = _run(fleet_, [m for message in messages for m in (message, message)])

    assert once == twice
    assert once[0] is not None
    assert once[0].status.is_terminal


def _run(fleet_: Fleet, messages: Iterable[Envelope]) -> tuple[ReleaseState | None, list[Message]]:
    state: ReleaseState | None = None
    sent: list[Message] = []
    for message in messages:
        decision = decide(state, message, fleet_)
        state = decision.state
        sent.extend(decision.outgoing)
    return state, sent


def test_duplicate_submission_of_an_accepted_release_sends_nothing() -> None:
    release = Release(component("api"))
    before = release.state

    assert release.send(submit(component("api"))) == ()
    assert release.state == before


@pytest.mark.parametrize(
    "late",
    [deployed("api"), failed("api"), rolled_back("api"), rollback_failed("api"), started("api")],
    ids=lambda m: type(m).__name__,
)
def test_late_reports_after_success_change_nothing(late: Message) -> None:
    release = Release(component("api"))
    release.send(deployed("api"))
    done = release.state

    assert release.send(late) == ()
    assert release.state == done


@pytest.mark.parametrize(
    "late",
    [deployed("api"), deployed("web"), failed("web"), rolled_back("api"), rollback_failed("api")],
    ids=lambda m: f"{type(m).__name__}-{m.service}",
)
def test_late_reports_after_a_rollback_change_nothing(late: Message) -> None:
    release = Release(component("api"), component("web", "api"))
    release.send(failed("api"))
    done = release.state
    assert release.status is ReleaseStatus.ROLLED_BACK

    assert release.send(late) == ()
    assert release.state == done


@pytest.mark.parametrize(
    "stray",
    [
        deployed("api"),
        failed("api"),
        rolled_back("api"),
        ReleaseSucceeded(),
        StartRelease(),
        AbortRelease(reason="never mind"),
        CheckDeadlines(now=later(10_000)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_messages_for_a_release_never_accepted_do_nothing(stray: Message) -> None:
    assert decide(None, event(stray), fleet("api")) == Decision(None, ())


# --- invalid submissions ------------------------------------------------------------------


INVALID: dict[str, tuple[SubmitRelease, list[str]]] = {
    "unknown environment": (submit(component("api"), environment="moon"), ["environment"]),
    "unknown service": (submit(component("api"), component("ghost")), ["components[1].service"]),
    "duplicate component": (
        submit(component("api"), component("api", version="3.0")),
        ["components[1].service"],
    ),
    "self dependency": (submit(component("api", "api")), ["components[0].depends_on[0]"]),
    "unknown dependency": (
        submit(component("web"), component("api", "web", "db")),
        ["components[1].depends_on[1]"],
    ),
    "cycle": (
        submit(component("api", "web"), component("web", "jobs"), component("jobs", "api")),
        ["components"],
    ),
}


@pytest.mark.parametrize("name", INVALID)
def test_invalid_submission_is_rejected_naming_the_field(name: str) -> None:
    request, paths = INVALID[name]

    decision = decide(None, event(request), fleet("api", "web", "jobs"))

    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.REJECTED
    assert decision.state.finished_at == T0
    assert decision.state.components == {}
    (rejected,) = decision.outgoing
    assert isinstance(rejected, ReleaseRejected)
    assert [p.path for p in rejected.problems] == paths
    assert all(p.reason for p in rejected.problems)
    assert decision.state.failure == "; ".join(str(p) for p in rejected.problems)


def test_rejection_reports_every_problem_at_once() -> None:
    request = submit(component("api", "api"), component("ghost"), component("web", "db"))

    decision = decide(None, event(request), fleet("api", "web"))

    (rejected,) = decision.outgoing
    assert isinstance(rejected, ReleaseRejected)
    assert [p.path for p in rejected.problems] == [
        "components[1].service",
        "components[0].depends_on[0]",
        "components[2].depends_on[0]",
    ]


def test_cycle_is_named_in_the_rejection() -> None:
    request, _ = INVALID["cycle"]

    (rejected,) = decide(None, event(request), fleet("api", "web", "jobs")).outgoing

    assert isinstance(rejected, ReleaseRejected)
    assert rejected.problems[0].reason == "dependency cycle: api -> web -> jobs -> api"


@pytest.mark.parametrize(
    "after",
    [deployed("api"), StartRelease(), CheckDeadlines(now=later(10_000))],
    ids=lambda m: type(m).__name__,
)
def test_rejected_release_ignores_everything_after(after: Message) -> None:
    request, _ = INVALID["unknown service"]
    decision = decide(None, event(request), fleet("api"))

    again = decide(decision.state, event(after, at=later(1)), fleet("api"))

    assert again == Decision(decision.state, ())


def test_a_person_asking_anything_of_a_rejected_release_is_told_it_has_ended() -> None:
    request, _ = INVALID["unknown service"]
    decision = decide(None, event(request), fleet("api"))

    again = decide(decision.state, event(AbortRelease(), at=later(1)), fleet("api"))

    reason = "the release has ended (rejected)"
    assert again == Decision(
        decision.state, (ApprovalRefused(command="AbortRelease", reason=reason),)
    )


def test_unreadable_submission_is_refused_as_a_rejected_release() -> None:
    problem = Problem(path="payload.components[0].version", reason="Field required")

    decision = refuse_submission(release_id=RELEASE_ID, actor="ci", at=T0, problems=[problem])

    assert decision.state is not None
    assert decision.state.status is ReleaseStatus.REJECTED
    assert decision.state.finished_at == T0
    assert decision.state.failure == "payload.components[0].version: Field required"
    assert decision.outgoing == (ReleaseRejected(problems=(problem,)),)
    assert decide(decision.state, event(submit(component("api"))), fleet("api")) == Decision(
        decision.state, ()
    )


# --- determinism --------------------------------------------------------------------------


def test_same_state_and_message_give_equal_decisions() -> None:
    fleet_ = fleet("db", "api", "web")
    request, start = opening(component("db"), component("api", "db"), component("web", "db"))
    queued = decide(None, request, fleet_)
    running = decide(queued.state, start, fleet_)
    report = event(deployed("db"), at=later(1))

    assert decide(None, request, fleet_) == queued
    assert decide(queued.state, start, fleet_) == running
    assert decide(running.state, report, fleet_) == decide(running.state, report, fleet_)


def test_decide_leaves_the_state_it_was_given_untouched() -> None:
    release = Release(component("db"), component("api", "db"))
    before = release.state
    assert before is not None
    snapshot = before.model_dump()

    decide(before, event(deployed("db"), at=later(5)), release.fleet)

    assert before.model_dump() == snapshot


def test_state_survives_a_round_trip_through_json() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    assert release.state is not None
    assert release.state.next_deadline is not None

    restored = ReleaseState.model_validate_json(release.state.model_dump_json())

    assert restored == release.state
    report = event(deployed("api"), at=later(9))
    assert decide(restored, report, release.fleet) == decide(release.state, report, release.fleet)
