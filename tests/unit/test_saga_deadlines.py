"""Deadlines: when the coordinator stops waiting for a worker, and what it does then.

Unless a test says otherwise the fleet's defaults hold: a step may take 300 s from the last
word, a component 3600 s from when it was sent. Releases are submitted at ``later(1)`` and
started, so their first components sent, at ``later(2)``.

A worker's progress reports never reach the saga: the worker records them in the store with
the time of its last word on the command it carries out (``Release.report``). Only when a
deadline comes does the coordinator read the last words of the components overdue, and tell
the saga in ``CheckDeadlines``: a worker heard from within a step of now has its deadline
moved a step past its word (never past the component's own limit), and nothing is sent.
Only the word of the command the saga waits for counts: same direction, same attempt.

A command overdue whose worker is silent is first sent again, ``MAX_RESENDS`` times, each
with a new deadline a step on; only the next overdue check, or one past the component's own
limit, gives up on it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from orchestrator.contract import (
    DeadlinePassed,
    DeployComponent,
    Message,
    ReleaseFailed,
    ReleaseRetried,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RetryRelease,
    RollbackComponent,
)
from orchestrator.saga import MAX_RESENDS, ComponentStatus, ReleaseStatus
from tests.unit.builders import (
    ENVIRONMENT,
    NEW_VERSION,
    OPERATOR,
    PREVIOUS,
    Release,
    component,
    deployed,
    deploys,
    failed,
    later,
    rollbacks,
    rolled_back,
    started,
    step_failed,
    step_started,
    step_succeeded,
    timeline,
    waiting,
)

STEP = timedelta(seconds=300)


def no_word(deadline_s: float, waited_for: str) -> str:
    return f"no word from the worker by {later(deadline_s).isoformat()} ({waited_for})"


def time_out(release: Release, service: str) -> tuple[Message, ...]:
    """Let ``service``'s deadline pass until the saga gives up; what the last check sent.

    Each check sends the command again and moves the deadline, until it has been resent
    ``MAX_RESENDS`` times; the next one gives up.
    """
    for _ in range(MAX_RESENDS - release.part(service).resends):
        release.check_deadlines(release.deadline(service))
    return release.check_deadlines(release.deadline(service))


# --- setting and moving the deadline -------------------------------------------------------


def test_every_component_sent_gets_a_deadline_one_step_on() -> None:
    release = Release(component("api"), component("web"), component("jobs", "api"))

    for service in ("api", "web"):
        assert release.part(service).sent_at == later(2)
        assert release.deadline(service) == later(2) + STEP
    assert release.part("jobs").deadline is None
    assert release.release.next_deadline == later(2) + STEP


def test_deadline_is_the_component_limit_when_that_comes_first() -> None:
    release = Release(component("api"), step_timeout_s=600, component_timeout_s=120)

    assert release.deadline("api") == later(2 + 120)


PROGRESS: list[Callable[[str], Message]] = [
    started,
    waiting,
    step_started,
    step_succeeded,
    step_failed,
]


@pytest.mark.parametrize("report", PROGRESS, ids=lambda r: r.__name__)
def test_progress_reports_sent_to_the_saga_change_nothing_at_any_time(
    report: Callable[[str], Message],
) -> None:
    # Workers record them in the store; were one to reach the saga, it is no answer, moves
    # no deadline, and records nothing (not even the previous versions ComponentStarted
    # carries: a rollback's worker reads those from what the deploying worker recorded).
    release = Release(component("api"), component("web"))

    for wait in (1, 400):  # in time, then past the deadline
        before = release.state
        assert release.send(report("api"), wait=wait) == ()
        assert release.state == before
    assert release.part("api").previous_versions == {}

    assert timeline(release.check_deadlines(release.now)) == ["deploy api", "deploy web"]
    before = release.state
    assert release.send(report("api")) == ()  # nor while the command is resent
    assert release.state == before


def test_word_read_at_the_deadline_moves_it_a_step_past_the_word() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=1000)
    release.report("api", wait=45)  # at later(47)
    assert release.deadline("api") == later(2 + 60)  # the saga has heard nothing yet

    assert release.check_deadlines(later(62)) == ()

    assert release.deadline("api") == later(47 + 60)
    assert release.part("api").sent_at == later(2)
    assert release.part("api").resends == 0  # heard from: nothing was sent again
    assert release.component("api") is ComponentStatus.DEPLOYING


def test_worker_silent_since_its_last_word_is_sent_again_a_step_after_it() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=1000)
    release.report("api", wait=45)  # at later(47)
    release.check_deadlines(later(62))  # moved to later(107)

    assert timeline(release.check_deadlines(later(107))) == ["deploy api"]
    assert release.part("api").resends == 1
    assert release.deadline("api") == later(107 + 60)


def test_deadline_never_passes_the_component_limit() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=100)
    limit = later(2 + 100)

    release.report("api", wait=30)  # at later(32)
    assert release.check_deadlines(later(62)) == ()
    assert release.deadline("api") == later(32 + 60)
    release.report("api", wait=30)  # at later(92)
    assert release.check_deadlines(later(92)) == ()
    assert release.deadline("api") == limit
    release.report("api", wait=5)  # at later(97): still working, but out of time

    assert timeline(release.check_deadlines(limit)) == ["late: deploy of api", "rollback api"]
    assert release.part("api").reason == no_word(102, "deploy of api")


def test_next_deadline_is_the_earliest_of_those_in_flight() -> None:
    release = Release(component("db"), component("cache"), step_timeout_s=60)
    release.report("cache", wait=10)  # at later(12)
    release.report("db", wait=20)  # at later(32)
    assert release.release.next_deadline == later(62)

    assert release.check_deadlines(later(62)) == ()

    assert release.deadline("cache") == later(12 + 60)
    assert release.deadline("db") == later(32 + 60)
    assert release.release.next_deadline == later(72)
    release.send(deployed("cache"))
    assert release.release.next_deadline == release.deadline("db") == later(92)


@pytest.mark.parametrize(
    "outcome",
    [deployed("api"), failed("api"), failed("api", restored=False)],
    ids=["deployed", "failed", "failed unrestored"],
)
def test_reported_outcome_clears_the_deadline(outcome: Message) -> None:
    release = Release(component("api"), component("web"))

    release.send(outcome)

    assert release.part("api").deadline is None
    assert release.release.next_deadline == release.deadline("web")


def test_rollback_sent_gets_its_own_deadline_pushed_by_its_reports() -> None:
    release = Release(component("api"), component("web"), step_timeout_s=60)
    release.send(deployed("api"))

    assert rollbacks(release.send(failed("web"), wait=10)) == ["api"]
    assert release.part("api").sent_at == later(13)
    assert release.deadline("api") == later(13 + 60)
    release.report("api", rollback=True, wait=20)  # at later(33)
    assert release.check_deadlines(later(73)) == ()
    assert release.deadline("api") == later(33 + 60)
    release.send(rolled_back("api"))
    assert release.part("api").deadline is None
    assert release.release.next_deadline is None


# --- before the deadline ---------------------------------------------------------------------


def test_check_before_any_deadline_changes_nothing() -> None:
    release = Release(component("api"), component("web"))
    release.report("api")
    before = release.state

    assert release.check_deadlines(later(2) + STEP - timedelta(seconds=1)) == ()
    assert release.state == before


# --- a command nobody answers is sent again --------------------------------------------------


def test_overdue_command_is_sent_again_with_a_new_deadline() -> None:
    release = Release(component("api"))
    (command,) = release.first

    assert release.check_deadlines(later(302)) == (command,)
    assert command == DeployComponent(environment=ENVIRONMENT, service="api", version=NEW_VERSION)
    assert release.component("api") is ComponentStatus.DEPLOYING
    assert release.part("api").resends == 1
    assert release.part("api").sent_at == later(2)  # the component's limit does not move
    assert release.deadline("api") == later(302) + STEP
    assert release.status is ReleaseStatus.RUNNING
    assert not release.release.failure

    before = release.state
    assert release.check_deadlines(later(303)) == ()  # the same check again changes nothing
    assert release.state == before


def test_after_every_resend_the_next_overdue_check_times_out() -> None:
    release = Release(component("api"))

    for resends in range(1, MAX_RESENDS + 1):
        assert timeline(release.check_deadlines(release.deadline("api"))) == ["deploy api"]
        assert release.part("api").resends == resends
    last_deadline = release.deadline("api")
    assert last_deadline == later(2) + (MAX_RESENDS + 1) * STEP

    assert release.check_deadlines(last_deadline)[0] == DeadlinePassed(
        environment=ENVIRONMENT, service="api", deadline=last_deadline, waited_for="deploy of api"
    )
    assert release.part("api").reason == no_word(2 + 900, "deploy of api")
    assert release.component("api") is ComponentStatus.ROLLING_BACK
    assert timeline(release.sent) == [
        "ReleaseAccepted",
        *["deploy api"] * (MAX_RESENDS + 1),
        "late: deploy of api",
        "rollback api",
    ]


def test_check_past_the_component_limit_times_out_at_once() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=1000)

    assert timeline(release.check_deadlines(later(2 + 1000))) == [
        "late: deploy of api",
        "rollback api",
    ]
    assert release.part("api").reason == no_word(62, "deploy of api")


def test_resend_deadline_stops_at_the_component_limit_and_then_times_out() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=100)

    assert timeline(release.check_deadlines(later(62))) == ["deploy api"]
    assert release.deadline("api") == later(2 + 100)
    assert timeline(release.check_deadlines(later(102))) == [
        "late: deploy of api",
        "rollback api",
    ]
    assert release.part("api").resends == 0  # reset by the rollback, sent at once


def test_answer_after_a_resend_is_taken_as_any_answer() -> None:
    release = Release(component("api"))
    release.check_deadlines(later(302))
    release.check_deadlines(later(602))  # resent MAX_RESENDS times: due at later(902)
    release.report("api")  # the resent command's worker, at later(603)

    assert release.check_deadlines(later(902)) == ()  # heard from: not given up on
    assert release.deadline("api") == later(603) + STEP
    assert release.send(deployed("api")) == (ReleaseSucceeded(),)
    assert release.component("api") is ComponentStatus.DEPLOYED
    assert release.part("api").deadline is None
    assert release.status is ReleaseStatus.SUCCEEDED


def test_resent_rollback_carries_the_same_versions() -> None:
    previous = {"h1": "0.9.0", "h2": "0.9.1"}
    release = Release(component("api"), component("web"))
    release.send(deployed("api", previous))
    (command,) = release.send(failed("web"))  # at later(4)

    assert release.check_deadlines(later(304)) == (command,)
    assert command == RollbackComponent(
        environment=ENVIRONMENT, service="api", from_version=NEW_VERSION, to_versions=previous
    )
    assert release.part("api").resends == 1
    assert release.deadline("api") == later(304) + STEP


def test_resends_start_again_from_nothing_for_the_rollback() -> None:
    release = Release(component("api"), component("web"))
    for _ in range(MAX_RESENDS):
        assert sorted(deploys(release.check_deadlines(release.deadline("api")))) == ["api", "web"]
    assert release.part("api").resends == MAX_RESENDS
    release.send(deployed("api"))

    assert rollbacks(release.send(failed("web"))) == ["api"]
    assert release.part("api").resends == 0
    assert timeline(release.check_deadlines(release.deadline("api"))) == ["rollback api"]
    assert release.part("api").resends == 1
    assert release.component("api") is ComponentStatus.ROLLING_BACK


# --- a deploy that does not report in time ---------------------------------------------------


def test_silent_deploy_times_out_at_its_deadline_and_is_rolled_back() -> None:
    release = Release(component("db"), component("api", "db"), component("mail"))
    release.report("db")  # db's worker starts, at later(3), then falls silent
    release.send(deployed("mail"))
    assert release.check_deadlines(later(302)) == ()  # its word moves the deadline
    assert release.deadline("db") == later(303)
    assert release.check_deadlines(later(303)) == (
        DeployComponent(environment=ENVIRONMENT, service="db", version=NEW_VERSION),
    )
    assert timeline(release.check_deadlines(later(603))) == ["deploy db"]
    reason = no_word(903, "deploy of db")

    assert release.check_deadlines(later(903)) == (
        DeadlinePassed(
            environment=ENVIRONMENT, service="db", deadline=later(903), waited_for="deploy of db"
        ),
        # db never said it deployed: the saga has no previous versions for it, and its
        # rollback's worker reads the versions the deploying worker recorded.
        RollbackComponent(
            environment=ENVIRONMENT, service="db", from_version=NEW_VERSION, to_versions={}
        ),
        RollbackComponent(
            environment=ENVIRONMENT, service="mail", from_version=NEW_VERSION, to_versions=PREVIOUS
        ),
    )
    assert release.status is ReleaseStatus.COMPENSATING
    assert release.release.failure == f"db: {reason}"
    assert release.part("db").reason == reason
    assert release.component("db") is ComponentStatus.ROLLING_BACK
    assert release.deadline("db") == later(903) + STEP  # the rollback's own
    assert release.component("api") is ComponentStatus.SKIPPED

    assert release.check_deadlines(later(904)) == ()  # DeadlinePassed is said once
    assert release.send(rolled_back("db")) == ()
    assert release.send(rolled_back("mail")) == (ReleaseRolledBack(reason=f"db: {reason}"),)
    assert release.release.status is ReleaseStatus.ROLLED_BACK
    assert timeline(release.sent) == [
        "ReleaseAccepted",
        "deploy db",
        "deploy mail",
        "deploy db",
        "deploy db",
        "late: deploy of db",
        "rollback db",
        "rollback mail",
        "ReleaseRolledBack",
    ]


def test_timed_out_deploy_waits_like_a_deployed_one_for_siblings_in_flight() -> None:
    release = Release(component("db"), component("mail"), step_timeout_s=60)
    for _ in range(MAX_RESENDS):
        release.report("mail", wait=30)  # mail's worker keeps its deadline ahead
        assert timeline(release.check_deadlines(release.deadline("db"))) == ["deploy db"]
    release.report("mail", wait=30)

    assert timeline(release.check_deadlines(release.deadline("db"))) == ["late: deploy of db"]
    assert release.status is ReleaseStatus.COMPENSATING
    assert release.component("db") is ComponentStatus.TIMED_OUT
    assert release.part("db").deadline is None
    assert release.component("mail") is ComponentStatus.DEPLOYING
    assert release.release.next_deadline == release.deadline("mail")
    assert rollbacks(release.send(deployed("mail"))) == ["db", "mail"]


def test_timed_out_dependent_is_rolled_back_before_what_it_depends_on() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))  # api sent at later(3)

    assert timeline(time_out(release, "api")) == ["late: deploy of api", "rollback api"]
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert rollbacks(release.send(rolled_back("api"))) == ["db"]


def test_several_late_components_are_each_named_before_any_command() -> None:
    release = Release(component("db"), component("mail"), component("api", "db"))

    assert timeline(release.check_deadlines(later(2) + STEP)) == ["deploy db", "deploy mail"]
    assert timeline(time_out(release, "db")) == [
        "late: deploy of db",
        "late: deploy of mail",
        "rollback db",
        "rollback mail",
    ]
    assert release.release.failure.startswith("db: no word from the worker")


def test_late_and_resent_in_one_check_names_the_late_before_compensating() -> None:
    release = Release(component("db"), component("mail"), step_timeout_s=60)
    release.report("mail", wait=30)  # at later(32), then mail's worker falls silent
    release.check_deadlines(later(62))  # db resent, due at later(122); mail due at later(92)
    release.check_deadlines(later(122))  # db resent again, due at later(182); mail too

    assert release.deadline("db") == release.deadline("mail") == later(182)
    assert timeline(release.check_deadlines(later(182))) == ["deploy mail", "late: deploy of db"]
    assert release.status is ReleaseStatus.COMPENSATING
    assert release.component("db") is ComponentStatus.TIMED_OUT
    assert release.component("mail") is ComponentStatus.DEPLOYING
    assert release.part("mail").resends == MAX_RESENDS


def test_deploy_timing_out_during_a_compensation_keeps_the_first_failure() -> None:
    release = Release(component("api"), component("web"))
    release.send(failed("web"))

    assert timeline(release.check_deadlines(later(2) + STEP)) == ["deploy api"]
    assert timeline(time_out(release, "api")) == ["late: deploy of api", "rollback api"]
    assert release.release.failure == "web: verify failed on h2"


# --- whatever a late component says afterwards is ignored -----------------------------------


def _timed_out_waiting_for_mail() -> Release:
    release = Release(component("db"), component("mail"), step_timeout_s=60)
    for _ in range(MAX_RESENDS + 1):
        release.report("mail", wait=30)  # mail's worker keeps its deadline ahead
        release.check_deadlines(release.deadline("db"))
    assert release.component("db") is ComponentStatus.TIMED_OUT
    assert release.component("mail") is ComponentStatus.DEPLOYING
    return release


LATE_OUTCOMES = [deployed("db"), failed("db"), failed("db", restored=False)]
LATE_IDS = ["ComponentDeployed", "ComponentFailed", "ComponentFailed unrestored"]


@pytest.mark.parametrize("late", LATE_OUTCOMES, ids=LATE_IDS)
def test_late_outcome_of_a_timed_out_deploy_changes_nothing(late: Message) -> None:
    release = _timed_out_waiting_for_mail()
    before = release.state

    assert release.send(late) == ()
    assert release.state == before


@pytest.mark.parametrize("late", LATE_OUTCOMES, ids=LATE_IDS)
def test_late_outcome_of_a_timed_out_deploy_leaves_its_rollback_alone(late: Message) -> None:
    release = _timed_out_waiting_for_mail()
    assert rollbacks(release.send(deployed("mail"))) == ["db", "mail"]
    before = release.state

    assert release.send(late) == ()
    assert release.state == before
    assert release.send(rolled_back("db")) == ()
    assert isinstance(release.send(rolled_back("mail"))[0], ReleaseRolledBack)


def test_late_deploy_step_of_a_timed_out_deploy_does_not_hold_off_its_rollback() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=1000)
    time_out(release, "api")  # the deploy timed out; its rollback is sent at once
    assert release.component("api") is ComponentStatus.ROLLING_BACK
    rollback_due = release.deadline("api")

    release.report("api", rollback=False, wait=30)  # the old deploy's worker, still going

    assert timeline(release.check_deadlines(rollback_due)) == ["rollback api"]
    assert release.part("api").resends == 1
    release.report("api", rollback=False, wait=30)
    assert timeline(time_out(release, "api")) == ["late: rollback of api", "ReleaseFailed"]


def test_word_from_a_first_run_does_not_count_for_its_retry() -> None:
    release = Release(component("api"), step_timeout_s=60, component_timeout_s=1000)
    time_out(release, "api")
    time_out(release, "api")  # its rollback too: the release failed
    assert release.status is ReleaseStatus.FAILED
    assert release.send(RetryRelease(), actor=OPERATOR) == (
        ReleaseRetried(attempt=2, components=("api",)),
    )
    assert deploys(release.start()) == ["api"]
    due = release.deadline("api")

    release.report("api", attempt=1, wait=30)  # the first run's deploy worker, still going

    assert timeline(release.check_deadlines(due)) == ["deploy api"]
    assert release.part("api").resends == 1
    release.report("api", wait=30)  # the retry's own worker (attempt 2) is heard
    heard = release.now
    assert release.check_deadlines(release.deadline("api")) == ()
    assert release.deadline("api") == heard + timedelta(seconds=60)


# --- a rollback that does not report in time -------------------------------------------------


def test_rollback_that_times_out_ends_the_release_failed() -> None:
    release = Release(component("api"), component("web"))
    release.send(deployed("api"))
    release.send(failed("web"))  # api's rollback sent at later(4), due at later(304)
    reason = no_word(904, "rollback of api")

    late, outcome = time_out(release, "api")  # resent at later(304) and later(604)

    assert late == DeadlinePassed(
        environment=ENVIRONMENT, service="api", deadline=later(904), waited_for="rollback of api"
    )
    assert outcome == ReleaseFailed(
        reason="web: verify failed on h2; compensation incomplete for api",
        needs_attention=(f"api: rollback_failed ({reason})",),
    )
    assert release.status is ReleaseStatus.FAILED
    assert release.component("api") is ComponentStatus.ROLLBACK_FAILED
    assert release.part("api").deadline is None
    done = release.state
    assert release.send(rolled_back("api")) == ()
    assert release.state == done


def test_rollback_that_times_out_pins_what_it_depends_on() -> None:
    release = Release(component("db"), component("api", "db"), component("web", "api"))
    release.send(deployed("db"))
    release.send(deployed("api"))
    release.send(failed("web"))

    late, outcome = release.check_deadlines(later(10_000))  # past the component limit

    assert isinstance(late, DeadlinePassed)
    assert isinstance(outcome, ReleaseFailed)
    assert rollbacks(release.sent) == ["api"]
    assert release.component("db") is ComponentStatus.DEPLOYED
    assert sorted(e.split(":")[0] for e in outcome.needs_attention) == ["api", "db"]


def test_rollback_timing_out_while_another_rolls_back_waits_for_it() -> None:
    release = Release(component("api"), component("mail"), component("web"))
    release.send(deployed("api"))
    release.send(deployed("mail"))
    assert rollbacks(release.send(failed("web"))) == ["api", "mail"]  # at later(5)
    release.report("mail", rollback=True, wait=100)
    for _ in range(MAX_RESENDS):
        assert timeline(release.check_deadlines(release.deadline("api"))) == ["rollback api"]
        release.report("mail", rollback=True, wait=100)  # mail's worker keeps ahead

    assert timeline(release.check_deadlines(release.deadline("api"))) == ["late: rollback of api"]
    assert release.status is ReleaseStatus.COMPENSATING
    (outcome,) = release.send(rolled_back("mail"))

    assert isinstance(outcome, ReleaseFailed)
    assert [e.split(":")[0] for e in outcome.needs_attention] == ["api"]


def test_rollback_of_a_timed_out_deploy_may_time_out_too() -> None:
    release = Release(component("api"))
    time_out(release, "api")  # deploy resent at later(302) and later(602), late at later(902)

    late, outcome = time_out(release, "api")  # rollback resent at later(1202), later(1502)

    assert late == DeadlinePassed(
        environment=ENVIRONMENT, service="api", deadline=later(1802), waited_for="rollback of api"
    )
    assert isinstance(outcome, ReleaseFailed)
    assert release.component("api") is ComponentStatus.ROLLBACK_FAILED
    assert timeline(release.sent) == [
        "ReleaseAccepted",
        *["deploy api"] * (MAX_RESENDS + 1),
        "late: deploy of api",
        *["rollback api"] * (MAX_RESENDS + 1),
        "late: rollback of api",
        "ReleaseFailed",
    ]


def test_deadline_check_after_the_end_changes_nothing() -> None:
    release = Release(component("api"))
    release.send(deployed("api"))
    done = release.state

    assert release.check_deadlines(later(10_000)) == ()
    assert release.state == done
