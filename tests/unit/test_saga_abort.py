"""Aborting a release: at once while queued, like a failure while running, a note after."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator.contract import ApprovalRefused, ReleaseFailed, ReleaseRolledBack
from orchestrator.saga import ComponentStatus, ReleaseStatus
from tests.unit.builders import (
    OPERATOR,
    Release,
    component,
    deployed,
    deploys,
    failed,
    rollback_failed,
    rollbacks,
    rolled_back,
    timeline,
)

# --- while queued: nothing was done, so nothing is undone ----------------------------------


def test_abort_while_queued_rolls_the_release_back_at_once() -> None:
    release = Release(component("db"), component("api", "db"), start=False)

    assert release.abort("wrong build") == (
        ReleaseRolledBack(reason="aborted by alice: wrong build"),
    )
    assert release.status is ReleaseStatus.ROLLED_BACK
    assert release.release.aborted_by == OPERATOR
    assert release.release.failure == "aborted by alice: wrong build"
    assert release.release.finished_at == release.now
    assert {release.component(s) for s in ("db", "api")} == {ComponentStatus.SKIPPED}
    assert deploys(release.sent) == []


def test_abort_without_a_reason_names_who_aborted() -> None:
    release = Release(component("api"), start=False)

    assert release.abort("", actor="bob") == (ReleaseRolledBack(reason="aborted by bob"),)
    assert release.release.aborted_by == "bob"


def test_start_that_comes_after_an_abort_starts_nothing() -> None:
    # The coordinator took the locks while the abort was on its way.
    release = Release(component("api"), start=False)
    release.abort()
    aborted = release.state

    assert release.start() == ()
    assert release.state == aborted


# --- while running: like a failure ---------------------------------------------------------


def test_abort_while_running_waits_for_siblings_and_rolls_back_top_down() -> None:
    release = Release(
        component("db"),
        component("api", "db"),
        component("auth", "db"),
        component("web", "api", "auth"),
        component("mail"),
    )
    release.send(deployed("db"))
    release.send(deployed("api"))
    # auth and mail are in flight, web waits for auth.

    assert release.abort("wrong build") == ()
    assert release.status is ReleaseStatus.COMPENSATING
    assert release.release.aborted_by == OPERATOR
    assert release.release.failure == "aborted by alice: wrong build"
    assert release.component("web") is ComponentStatus.SKIPPED
    assert release.component("auth") is ComponentStatus.DEPLOYING
    assert release.component("mail") is ComponentStatus.DEPLOYING
    assert release.part("auth").deadline is not None  # still waited for, and timed

    assert release.send(deployed("auth")) == ()  # nothing starts, mail is still in flight
    assert rollbacks(release.send(deployed("mail"))) == ["api", "auth", "mail"]
    assert release.send(rolled_back("api")) == ()  # db waits for auth too
    assert rollbacks(release.send(rolled_back("auth"))) == ["db"]
    assert release.send(rolled_back("mail")) == ()
    assert release.send(rolled_back("db")) == (
        ReleaseRolledBack(reason="aborted by alice: wrong build"),
    )
    assert release.release.status is ReleaseStatus.ROLLED_BACK
    assert timeline(release.sent) == [
        "ReleaseAccepted",
        "deploy db",
        "deploy mail",
        "deploy api",
        "deploy auth",
        "rollback api",
        "rollback auth",
        "rollback mail",
        "rollback db",
        "ReleaseRolledBack",
    ]


def test_abort_in_a_chain_waits_for_the_one_in_flight_then_rolls_back_top_down() -> None:
    release = Release(component("db"), component("api", "db"), component("web", "api"))
    release.send(deployed("db"))

    assert rollbacks(release.abort()) == []  # api is in flight
    assert rollbacks(release.send(deployed("api"))) == ["api"]
    assert rollbacks(release.send(rolled_back("api"))) == ["db"]
    assert release.component("web") is ComponentStatus.SKIPPED


def test_sibling_failing_after_an_abort_is_not_rolled_back_and_the_abort_stays_the_reason() -> None:
    release = Release(component("api"), component("web"))
    release.send(deployed("api"))
    release.abort("freeze")

    assert rollbacks(release.send(failed("web"))) == ["api"]
    assert release.release.failure == "aborted by alice: freeze"
    assert release.send(rolled_back("api")) == (
        ReleaseRolledBack(reason="aborted by alice: freeze"),
    )
    assert release.component("web") is ComponentStatus.FAILED


def test_aborted_release_whose_rollback_fails_ends_failed_naming_the_abort() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.abort("freeze")
    release.send(deployed("api"))

    (outcome,) = release.send(rollback_failed("api"))

    assert release.status is ReleaseStatus.FAILED
    assert isinstance(outcome, ReleaseFailed)
    assert outcome.reason.startswith("aborted by alice: freeze")
    assert rollbacks(release.sent) == ["api"]


def test_abort_while_running_stamps_the_time_of_the_change() -> None:
    release = Release(component("api"), component("web"))

    release.abort()

    assert release.release.updated_at == release.now


# --- while compensating: only who aborted is noted -----------------------------------------


def test_abort_while_compensating_a_failure_only_notes_who_aborted() -> None:
    release = Release(component("api"), component("web"), component("jobs", "api"))
    release.send(failed("web"))
    before = release.release

    assert release.abort() == ()
    after = release.release
    assert after.aborted_by == OPERATOR
    assert after.updated_at == release.now
    assert after.failure == "web: verify failed on h2"  # still the first thing that went wrong
    assert (after.status, after.components) == (before.status, before.components)

    assert rollbacks(release.send(deployed("api"))) == ["api"]
    assert release.send(rolled_back("api")) == (
        ReleaseRolledBack(reason="web: verify failed on h2"),
    )


def test_second_abort_changes_nothing() -> None:
    release = Release(component("api"), component("web"))
    release.abort("first")
    aborted = release.state

    assert release.abort("second", actor="bob") == ()
    assert release.state == aborted
    assert release.release.aborted_by == OPERATOR


def test_only_the_first_abort_during_a_compensation_is_noted() -> None:
    release = Release(component("api"), component("web"))
    release.send(failed("web"))
    release.abort(actor="bob")
    noted = release.state

    assert release.abort() == ()
    assert release.state == noted
    assert release.release.aborted_by == "bob"


# --- after the end: nothing ------------------------------------------------------------------


def _succeeded() -> Release:
    release = Release(component("api"))
    release.send(deployed("api"))
    return release


def _rolled_back() -> Release:
    release = Release(component("api"))
    release.send(failed("api"))
    return release


def _failed() -> Release:
    release = Release(component("api"), component("web"))
    release.send(deployed("api"))
    release.send(failed("web"))
    release.send(rollback_failed("api"))
    return release


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        (_succeeded, ReleaseStatus.SUCCEEDED),
        (_rolled_back, ReleaseStatus.ROLLED_BACK),
        (_failed, ReleaseStatus.FAILED),
    ],
    ids=["succeeded", "rolled back", "failed"],
)
def test_abort_after_the_end_changes_nothing(
    ending: Callable[[], Release], status: ReleaseStatus
) -> None:
    release = ending()
    assert release.status is status
    done = release.state

    (refused,) = release.abort()
    assert refused == ApprovalRefused(
        command="AbortRelease", reason=f"the release has ended ({status})"
    )
    assert release.state == done
    assert release.release.aborted_by is None
