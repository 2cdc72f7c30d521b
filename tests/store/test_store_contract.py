"""One contract for every store: each test runs on SQLite and on real Redis.

The stores are opened through :func:`orchestrator.store.open_store`, as the processes
open them, so the URL dispatch is covered too.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing import get_context
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import pytest
import redis

from orchestrator.contract import (
    DeployComponent,
    Envelope,
    Step,
    StepStarted,
    envelope,
)
from orchestrator.saga import ComponentState, ComponentStatus, ReleaseState, ReleaseStatus
from orchestrator.store import (
    KEEP_WAKE,
    PEAK_DRAINED,
    Claim,
    CommitResult,
    DeadLetter,
    Effect,
    Held,
    KeepWake,
    NotHeld,
    Pending,
    StepDone,
    Store,
    StoreUnavailable,
    Word,
    open_store,
    shared,
    word_key,
)
from orchestrator.store import sqlite as sqlite_store
from orchestrator.store.keys import Keys
from orchestrator.store.redis import RedisStore
from orchestrator.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

OpenStore = Callable[[], Store]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.broker),
        # Redis's older protocol, which a store URL may ask for: some answers differ in shape
        pytest.param("redis-resp2", marks=pytest.mark.broker),
    ]
)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores on one backing (file or namespace); closes them all afterwards."""
    if request.param == "sqlite":
        url, namespace = f"sqlite:///{tmp_path / 'state' / 'drover.db'}", "drover"
    else:
        url = request.getfixturevalue("redis_url")
        namespace = request.getfixturevalue("namespace")
        if request.param == "redis-resp2":
            url += "?protocol=2"
    opened: list[Store] = []

    def opener() -> Store:
        opened.append(open_store(url, namespace=namespace))
        return opened[-1]

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: OpenStore) -> Store:
    return new_store()


def _state(
    release_id: str = "r1",
    *,
    created_at: datetime = T0,
    status: ReleaseStatus = ReleaseStatus.RUNNING,
) -> ReleaseState:
    api = ComponentState(
        service="api",
        version="1.2.3",
        depends_on=("db",),
        status=ComponentStatus.DEPLOYED,
        previous_versions={"web-1": "1.2.2", "web-2": "1.2.2"},
    )
    return ReleaseState(
        id=release_id,
        environment="prod",
        reason="quarterly",
        requested_by="alice",
        status=status,
        components={"api": api},
        created_at=created_at,
        updated_at=created_at + timedelta(minutes=1),
    )


def _deploy(release_id: str = "r1", message_id: str | None = None) -> Envelope:
    payload = DeployComponent(environment="prod", service="api", version="1.2.3")
    return envelope(payload, release_id=release_id, actor="coordinator", message_id=message_id)


def _report(release_id: str = "r1", message_id: str | None = None) -> Envelope:
    payload = StepStarted(
        environment="prod", service="api", step=Step.DRAIN, batch=1, hosts=("web-1",)
    )
    return envelope(payload, release_id=release_id, actor="worker-1", message_id=message_id)


def _commit(
    store: Store,
    release_id: str = "r1",
    *,
    message_id: str,
    expected: int | None = None,
    state: ReleaseState | None = None,
    outbox: Sequence[Envelope] = (),
    timeline: Sequence[Envelope] = (),
    wake_at: datetime | KeepWake | None = KEEP_WAKE,
    changed_components: Sequence[str] | None = None,
) -> CommitResult:
    return store.commit(
        release_id,
        message_id=message_id,
        expected_revision=expected,
        state=state,
        outbox=outbox,
        timeline=timeline,
        wake_at=wake_at,
        changed_components=changed_components,
    )


def _ids(messages: Sequence[Envelope]) -> list[str]:
    return [m.id for m in messages]


def _eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds, polling; fail if it does not within the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


# --- the saga ---------------------------------------------------------------------------


def test_an_unknown_release_loads_as_none(store: Store) -> None:
    assert store.load("nope") is None
    assert store.timeline("nope") == []


def test_commit_then_load_round_trips_the_state(store: Store) -> None:
    state = _state()
    assert _commit(store, message_id="m1", state=state) is CommitResult.COMMITTED
    stored = store.load("r1")
    assert stored is not None
    assert stored.state == state
    assert stored.revision == 1


def test_every_state_commit_bumps_the_revision(store: Store) -> None:
    for revision in range(3):
        state = _state().model_copy(update={"reason": f"step {revision}"})
        result = _commit(store, message_id=f"m{revision}", expected=revision, state=state)
        assert result is CommitResult.COMMITTED
    stored = store.load("r1")
    assert stored is not None
    assert (stored.revision, stored.state.reason) == (3, "step 2")


def test_a_stale_revision_is_a_conflict_that_writes_nothing(store: Store) -> None:
    _commit(store, message_id="m1", state=_state())
    changed = _state(status=ReleaseStatus.SUCCEEDED)
    outbox, timeline = [_deploy()], [_report()]

    result = _commit(
        store, message_id="m2", expected=0, state=changed, outbox=outbox, timeline=timeline
    )

    assert result is CommitResult.CONFLICT
    stored = store.load("r1")
    assert stored is not None
    assert (stored.state, stored.revision) == (_state(), 1)
    assert store.pending_outbox() == []
    assert store.timeline("r1") == []
    # the message was not marked seen: retried on the right revision, it goes through
    result = _commit(store, message_id="m2", expected=1, state=changed, outbox=outbox)
    assert result is CommitResult.COMMITTED
    # nor were the outbox ids: the retry's outbox is the only one
    assert store.pending_outbox() == outbox


def test_a_conflict_on_a_release_never_stored(store: Store) -> None:
    assert _commit(store, message_id="m1", expected=3, state=_state()) is CommitResult.CONFLICT
    assert store.load("r1") is None


def test_a_replayed_message_is_a_duplicate_that_writes_nothing(store: Store) -> None:
    _commit(store, message_id="m1", state=_state(), timeline=[_report()])
    before = (store.load("r1"), store.timeline("r1"))

    result = _commit(
        store,
        message_id="m1",
        expected=1,
        state=_state(status=ReleaseStatus.SUCCEEDED),
        outbox=[_deploy()],
        timeline=[_report()],
    )

    assert result is CommitResult.DUPLICATE
    assert (store.load("r1"), store.timeline("r1")) == before
    assert store.pending_outbox() == []


def test_duplicates_are_judged_per_release(store: Store) -> None:
    _commit(store, "r1", message_id="m1", state=_state("r1"))
    assert _commit(store, "r2", message_id="m1", state=_state("r2")) is CommitResult.COMMITTED


def test_the_messages_a_step_sends_count_as_seen(store: Store) -> None:
    sent = _deploy()
    _commit(store, message_id="m1", state=_state(), outbox=[sent])
    # the coordinator later consumes its own published message: it must not act twice
    assert _commit(store, message_id=sent.id, expected=1, state=_state()) is (
        CommitResult.DUPLICATE
    )
    assert _commit(store, message_id=sent.id, state=None) is CommitResult.DUPLICATE


def test_a_commit_without_state_adds_to_the_timeline_and_marks_seen(store: Store) -> None:
    _commit(store, message_id="m1", state=_state())
    report = _report()

    result = _commit(store, message_id=report.id, expected=1, state=None, timeline=[report])

    assert result is CommitResult.COMMITTED
    stored = store.load("r1")
    assert stored is not None
    assert (stored.state, stored.revision) == (_state(), 1)
    assert store.timeline("r1") == [report]
    assert _commit(store, message_id=report.id, state=None) is CommitResult.DUPLICATE


def test_a_decision_that_changed_nothing_on_a_stale_state_is_a_conflict(store: Store) -> None:
    # On the newer state the same message might have changed something: it must be
    # decided again, not recorded as done.
    _commit(store, message_id="m1", state=_state())
    _commit(store, message_id="m2", expected=1, state=_state(status=ReleaseStatus.PAUSED))
    report = _report()

    result = _commit(store, message_id=report.id, expected=1, state=None, timeline=[report])

    assert result is CommitResult.CONFLICT
    assert store.timeline("r1") == []
    # a note that decides nothing names no revision, and is never refused for one
    assert _commit(store, message_id=report.id, state=None, timeline=[report]) is (
        CommitResult.COMMITTED
    )


def test_a_commit_writes_the_components_it_names_and_keeps_their_order(store: Store) -> None:
    first = _state()
    api = first.components["api"]
    names = ["web", "db", "api", "cache"]
    components = {name: api.model_copy(update={"service": name}) for name in names}
    _commit(store, message_id="m1", state=first.model_copy(update={"components": components}))
    moved = components["db"].model_copy(update={"status": ComponentStatus.ROLLING_BACK})
    later = first.model_copy(
        update={"components": {**components, "db": moved}, "status": ReleaseStatus.COMPENSATING}
    )

    _commit(store, message_id="m2", expected=1, state=later, changed_components=["db"])

    stored = store.load("r1")
    assert stored is not None
    assert stored.state == later
    assert list(stored.state.components) == names
    assert store.releases() == [later]


def test_a_release_loads_with_only_the_components_asked_for(store: Store) -> None:
    api = _state().components["api"]
    components = {name: api.model_copy(update={"service": name}) for name in ["a", "b", "c"]}
    _commit(store, message_id="m1", state=_state().model_copy(update={"components": components}))

    some = store.load("r1", components=["c", "a", "nope"])
    none = store.load("r1", components=[])

    assert some is not None and none is not None
    assert list(some.state.components) == ["a", "c"]
    assert some.state.components["c"] == components["c"]
    assert none.state.components == {}
    assert (some.revision, none.state.status) == (1, ReleaseStatus.RUNNING)
    assert store.load("nope", components=["a"]) is None


def test_a_timeline_reads_from_where_a_follower_left_off(store: Store) -> None:
    reports = [_report() for _ in range(4)]
    _commit(store, message_id="m1", state=_state(), timeline=reports[:3])
    _commit(store, message_id="m2", timeline=reports[3:])

    assert store.timeline("r1", start=2) == reports[2:]
    assert store.timeline("r1", start=4) == []
    assert store.timeline("r1", start=0) == store.timeline("r1") == reports


def test_pending_outbox_is_in_commit_order_across_releases(store: Store) -> None:
    first, second, third, fourth = (_deploy(r) for r in ("r2", "r1", "r2", "r1"))
    _commit(store, "r2", message_id="a", state=_state("r2"), outbox=[first])
    _commit(store, "r1", message_id="b", state=_state("r1"), outbox=[second, third])
    _commit(store, "r2", message_id="c", state=None, outbox=[fourth])

    assert store.pending_outbox() == [first, second, third, fourth]
    assert store.pending_outbox(limit=2) == [first, second]
    assert store.pending_outbox(limit=0) == []


def test_mark_published_removes_from_the_pending_outbox(store: Store) -> None:
    messages = [_deploy() for _ in range(4)]
    _commit(store, message_id="m1", state=_state(), outbox=messages)

    store.mark_published([messages[0].id, messages[2].id, "never-sent"])
    store.mark_published([])

    assert _ids(store.pending_outbox()) == _ids([messages[1], messages[3]])
    store.mark_published(_ids(messages))
    assert store.pending_outbox() == []


def test_the_timeline_keeps_commit_order_per_release(store: Store) -> None:
    one, two, three, other = _report(), _deploy(), _report(), _report("r2")
    _commit(store, message_id="m1", state=_state(), timeline=[one, two])
    _commit(store, "r2", message_id="m2", state=None, timeline=[other])
    _commit(store, message_id="m3", state=None, timeline=[three])

    assert store.timeline("r1") == [one, two, three]
    assert store.timeline("r2") == [other]


def test_a_workers_reports_join_the_timeline_in_the_order_they_were_recorded(
    store: Store,
) -> None:
    command, steps, outcome = _deploy(), [_report(), _report()], _report()
    _commit(store, message_id="m1", state=_state(), outbox=[command], timeline=[command])
    store.record_reports(Word("r1", word_key("api", rollback=False, attempt=1), T0, steps))
    _commit(store, message_id="m2", state=None, timeline=[outcome])

    assert store.timeline("r1") == [command, *steps, outcome]
    assert store.timeline("r1", start=1) == [*steps, outcome]


def test_the_last_word_is_kept_per_component_direction_and_attempt(store: Store) -> None:
    deploy, undo, retry = (
        word_key("api", rollback=False, attempt=1),
        word_key("api", rollback=True, attempt=1),
        word_key("api", rollback=False, attempt=2),
    )
    later_on = T0 + timedelta(seconds=42.5)
    store.record_reports(Word("r1", deploy, T0, [_report()]))
    store.record_reports(Word("r1", deploy, later_on))  # a word without reports (waiting)
    store.record_reports(Word("r1", undo, T0, [_report()]))
    store.record_reports(Word("r2", retry, T0, [_report("r2")]))

    assert store.last_words("r1", [deploy, undo, retry]) == {deploy: later_on, undo: T0}
    assert store.last_words("r1", [retry]) == {}
    assert store.last_words("r2", [retry]) == {retry: T0}
    assert store.last_words("r1", []) == {}
    assert len(store.timeline("r1")) == 2


def test_a_naive_time_of_a_word_is_refused_and_writes_nothing(store: Store) -> None:
    word = word_key("api", rollback=False, attempt=1)
    with pytest.raises(ValueError, match="time zone"):
        store.record_reports(Word("r1", word, datetime(2026, 1, 1), [_report()]))

    assert store.last_words("r1", [word]) == {}
    assert store.timeline("r1") == []


def test_releases_lists_the_newest_first(store: Store) -> None:
    created = {"old": T0, "newest": T0 + timedelta(days=2), "middle": T0 + timedelta(days=1)}
    for release_id, at in created.items():
        _commit(store, release_id, message_id="m1", state=_state(release_id, created_at=at))
    # a later step changes the state, not the release's place in the list
    stored = store.load("old")
    assert stored is not None
    done = stored.state.model_copy(update={"status": ReleaseStatus.SUCCEEDED})
    _commit(store, "old", message_id="m2", expected=1, state=done)

    assert [r.id for r in store.releases()] == ["newest", "middle", "old"]
    assert [r.id for r in store.releases(limit=2)] == ["newest", "middle"]
    assert store.releases()[-1] == done
    assert store.releases(limit=0) == []


# --- wake-up times ------------------------------------------------------------------------


def test_a_release_is_due_from_its_wake_time_on_earliest_first(store: Store) -> None:
    wakes = {"late": T0 + timedelta(minutes=5), "early": T0, "never": None}
    for release_id, at in wakes.items():
        _commit(store, release_id, message_id="m1", state=_state(release_id), wake_at=at)

    assert store.due(T0 - timedelta(seconds=1)) == []
    assert store.due(T0) == ["early"]  # at the wake time itself, it is due
    assert store.due(T0 + timedelta(hours=1)) == ["early", "late"]
    assert store.due(T0 + timedelta(hours=1), limit=1) == ["early"]
    assert store.due(T0 + timedelta(hours=1), limit=0) == []


def test_the_wake_time_is_kept_moved_or_cleared_by_later_commits(store: Store) -> None:
    later = T0 + timedelta(minutes=10)
    _commit(store, message_id="m1", state=_state(), wake_at=T0)

    _commit(store, message_id="m2", expected=1, state=_state())  # KEEP_WAKE by default
    assert store.due(T0) == ["r1"]
    _commit(store, message_id="m3", state=None, wake_at=later)  # a report may move it
    assert store.due(T0) == []
    assert store.due(later) == ["r1"]
    _commit(store, message_id="m4", expected=2, state=_state(), wake_at=None)
    assert store.due(later + timedelta(days=1)) == []


def test_a_duplicate_or_a_conflict_leaves_the_wake_time_alone(store: Store) -> None:
    _commit(store, message_id="m1", state=_state(), wake_at=T0)

    duplicate = _commit(store, message_id="m1", state=None, wake_at=None)
    conflict = _commit(store, message_id="m2", expected=0, state=_state(), wake_at=None)
    assert (duplicate, conflict) == (CommitResult.DUPLICATE, CommitResult.CONFLICT)
    assert store.due(T0) == ["r1"]
    _commit(store, message_id="m3", state=None, wake_at=T0 + timedelta(days=1))
    assert _commit(store, message_id="m3", state=None, wake_at=T0) is CommitResult.DUPLICATE
    assert store.due(T0) == []


def test_a_naive_wake_time_is_refused_and_writes_nothing(store: Store) -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="time zone"):
        _commit(store, message_id="m1", state=_state(), wake_at=naive)
    assert store.load("r1") is None
    assert _commit(store, message_id="m1", state=_state()) is CommitResult.COMMITTED
    with pytest.raises(ValueError, match="time zone"):
        store.due(naive)


# --- the fleet's record -----------------------------------------------------------------


def test_host_versions_are_kept_per_environment_and_service(store: Store) -> None:
    assert store.host_versions("prod", "api") == {}
    assert store.set_host_version("prod", "api", "web-1", "1.0.0", None).wait() is True
    assert store.set_host_version("prod", "api", "web-1", "1.0.0", None).wait() is False
    store.set_host_version("prod", "api", "web-2", "1.0.0", None)
    assert store.set_host_version("prod", "api", "web-1", "1.1.0", None).wait() is True
    store.set_host_version("staging", "api", "web-1", "2.0.0", None)
    store.set_host_version("prod", "db", "db-1", "9.6", None)

    assert store.host_versions("prod", "api") == {"web-1": "1.1.0", "web-2": "1.0.0"}
    assert store.host_versions("staging", "api") == {"web-1": "2.0.0"}
    assert store.host_versions("prod", "db") == {"db-1": "9.6"}


def test_a_change_counts_its_effect_for_its_release_only_when_it_changed_something(
    store: Store,
) -> None:
    assert store.effects("r1") == {}
    store.set_host_version("prod", "api", "web-1", "2.0", Effect("r1", "web-1", "deploy"))
    store.set_host_version("prod", "api", "web-1", "2.0", Effect("r1", "web-1", "deploy"))
    store.set_host_version("prod", "api", "web-1", "1.0", Effect("r1", "web-1", "deploy"))
    store.set_drained("prod", "api", "web-2", True, Effect("r1", "web-2", "drain"))
    store.set_drained("prod", "api", "web-2", True, Effect("r1", "web-2", "drain"))
    store.set_drained("prod", "api", "web-2", False, Effect("r1", "web-2", "undrain"))
    store.set_drained("prod", "api", "web-3", False, Effect("r1", "web-3", "undrain"))
    store.set_service_state("prod", "api", "flag:x", "on", Effect("r1", "flag:x", "toggle"))
    store.set_service_state("prod", "api", "flag:x", "on", Effect("r1", "flag:x", "toggle"))
    store.set_host_version("prod", "api", "web-1", "3.0", Effect("r2", "web-1", "deploy"))

    assert store.effects("r1") == {
        ("prod", "api", "web-1", "deploy"): 2,
        ("prod", "api", "web-2", "drain"): 1,
        ("prod", "api", "web-2", "undrain"): 1,
        ("prod", "api", "flag:x", "toggle"): 1,
    }
    assert store.effects("r2") == {("prod", "api", "web-1", "deploy"): 1}


def test_the_fleets_changes_are_read_as_made_before_anyone_waits_for_them(
    store: Store,
) -> None:
    deployed = store.set_host_version(
        "prod", "api", "web-1", "2.0", Effect("r1", "web-1", "deploy")
    )
    drained = store.set_drained("prod", "api", "web-2", True, Effect("r1", "web-2", "drain"))
    switched = store.set_service_state("prod", "api", "live_colour", "blue", None)

    # the simulator reads what it changed (a gate's look at the versions, a drain's
    # requests in flight) without having waited for its changes
    assert store.host_versions("prod", "api") == {"web-1": "2.0"}
    assert store.drained_hosts("prod", "api") == {"web-2"}
    assert store.service_state("prod", "api")["live_colour"] == "blue"
    assert [deployed.done(), drained.done(), switched.done()] == [True] * 3
    assert [deployed.wait(), drained.wait(), switched.wait()] == [True] * 3


def test_a_change_made_under_a_lease_its_maker_no_longer_holds_changes_nothing(
    store: Store,
) -> None:
    mine = Held("component/r1/api", "worker-a/1")
    assert store.acquire_lease(mine.lease, mine.owner, 60)
    made = store.set_host_version(
        "prod", "api", "web-1", "2.0", Effect("r1", "web-1", "deploy", mine)
    )
    assert made.wait() is True

    store.release_lease(mine.lease, mine.owner)  # lapsed: nobody holds it
    with pytest.raises(NotHeld):
        store.set_drained("prod", "api", "web-1", True, Effect("r1", "web-1", "drain", mine)).wait()
    assert store.acquire_lease(mine.lease, "worker-b/1", 60)  # and taken over
    with pytest.raises(NotHeld):
        store.set_host_version(
            "prod", "api", "web-1", "3.0", Effect("r1", "web-1", "deploy", mine)
        ).wait()
    with pytest.raises(NotHeld):
        store.set_service_state(
            "prod", "api", "live_colour", "blue", Effect("r1", "*", "switch", mine)
        ).wait()

    assert store.host_versions("prod", "api") == {"web-1": "2.0"}
    assert store.drained_hosts("prod", "api") == set()
    assert store.service_state("prod", "api") == {}
    assert store.effects("r1") == {("prod", "api", "web-1", "deploy"): 1}


def test_notes_are_kept_replaced_listed_by_prefix_and_forgotten(store: Store) -> None:
    assert store.note("lock/prod/api") is None
    store.set_note("lock/prod/api", "alice")
    store.set_note("lock/prod/api", "bob")  # replaced
    store.set_note("lock/prod/db", "carol")
    store.set_note("lock/staging/api", "dave")
    store.set_note("lock/prod_x", "not under lock/prod/")
    store.set_note("lo*k/prod/api", "a glob character in a key")

    assert store.note("lock/prod/api") == "bob"
    assert store.notes("lock/prod/") == {"lock/prod/api": "bob", "lock/prod/db": "carol"}
    assert store.notes("lo*k/") == {"lo*k/prod/api": "a glob character in a key"}
    assert store.delete_note("lock/prod/api") is True
    assert store.delete_note("lock/prod/api") is False
    assert store.notes("lock/prod/") == {"lock/prod/db": "carol"}


def test_service_state_is_kept_per_environment_and_service(store: Store) -> None:
    assert store.service_state("prod", "api") == {}
    assert store.set_service_state("prod", "api", "live_colour", "blue", None).wait() is True
    assert store.set_service_state("prod", "api", "live_colour", "blue", None).wait() is False
    assert store.set_service_state("prod", "api", "live_colour", "green", None).wait() is True
    assert store.set_service_state("prod", "api", "flag:new-flow", "on", None).wait() is True
    assert store.set_service_state("staging", "api", "live_colour", "blue", None).wait() is True
    assert store.service_state("prod", "api") == {"live_colour": "green", "flag:new-flow": "on"}
    assert store.service_state("prod", "db") == {}


def test_drained_hosts_are_kept_per_environment_and_service(store: Store) -> None:
    assert store.drained_hosts("prod", "api") == set()
    assert store.set_drained("prod", "api", "web-1", True, None).wait() is True
    assert store.set_drained("prod", "api", "web-1", True, None).wait() is False  # already drained
    assert store.set_drained("prod", "api", "web-2", True, None).wait() is True
    assert store.set_drained("staging", "api", "web-3", True, None).wait() is True

    assert store.drained_hosts("prod", "api") == {"web-1", "web-2"}
    assert store.set_drained("prod", "api", "web-1", False, None).wait() is True
    assert store.set_drained("prod", "api", "web-1", False, None).wait() is False  # back already
    assert (
        store.set_drained("prod", "db", "web-2", False, None).wait() is False
    )  # never drained there
    assert store.drained_hosts("prod", "api") == {"web-2"}
    assert store.drained_hosts("staging", "api") == {"web-3"}


def test_the_most_hosts_ever_drained_at_once_is_kept_per_service(store: Store) -> None:
    hosts = [f"web-{n}" for n in range(1, 12)]  # past 9: the peak is a number, not text
    for host in hosts:
        store.set_drained("prod", "api", host, True, None)
    store.set_drained("prod", "api", "web-1", False, None)
    store.set_drained("prod", "api", "web-2", False, None)
    store.set_drained("prod", "api", "web-1", True, None)  # ten out now: not a new peak
    store.set_drained("prod", "db", "db-1", True, None)

    assert store.service_state("prod", "api")[PEAK_DRAINED] == "11"
    assert store.service_state("prod", "db")[PEAK_DRAINED] == "1"
    assert store.drained_hosts("prod", "api") == set(hosts) - {"web-2"}


# --- workers: leases ----------------------------------------------------------------------


def test_a_lease_has_one_owner_at_a_time(store: Store) -> None:
    assert store.lease_holder("api") is None
    assert store.acquire_lease("api", "worker-a", 60) is True
    assert store.acquire_lease("api", "worker-b", 60) is False
    assert store.renew_lease("api", "worker-b", 60) is False
    assert store.acquire_lease("db", "worker-b", 60) is True  # leases are per name
    assert store.lease_holder("api") == "worker-a"
    assert store.lease_holder("db") == "worker-b"


def test_the_owner_acquiring_or_renewing_sets_a_new_expiry(store: Store) -> None:
    assert store.acquire_lease("api", "worker-a", 60) is True
    assert store.acquire_lease("api", "worker-a", 0.05) is True  # its own: renewed, shorter
    _eventually(lambda: store.lease_holder("api") is None)

    assert store.acquire_lease("api", "worker-a", 60) is True
    assert store.renew_lease("api", "worker-a", 0.05) is True
    _eventually(lambda: store.lease_holder("api") is None)


def test_an_expired_lease_is_free_for_anyone_but_not_renewable(store: Store) -> None:
    store.acquire_lease("api", "worker-a", 0.05)
    _eventually(lambda: store.lease_holder("api") is None)

    assert store.renew_lease("api", "worker-a", 60) is False
    assert store.acquire_lease("api", "worker-b", 60) is True
    assert store.lease_holder("api") == "worker-b"


def test_only_the_owner_releases_a_lease(store: Store) -> None:
    store.release_lease("api", "worker-a")  # nobody holds it: nothing to do
    store.acquire_lease("api", "worker-a", 60)

    store.release_lease("api", "worker-b")
    assert store.lease_holder("api") == "worker-a"
    store.release_lease("api", "worker-a")
    assert store.lease_holder("api") is None
    assert store.renew_lease("api", "worker-a", 60) is False
    assert store.acquire_lease("api", "worker-b", 60) is True


def test_a_lease_needs_a_positive_ttl(store: Store) -> None:
    for ttl_s in (0, -1.0):
        with pytest.raises(ValueError, match="positive TTL"):
            store.acquire_lease("api", "worker-a", ttl_s)
        with pytest.raises(ValueError, match="positive TTL"):
            store.renew_lease("api", "worker-a", ttl_s)
    assert store.lease_holder("api") is None


def _contend(stores: Sequence[Store], attempt: Callable[[Store, str], bool]) -> list[bool]:
    """Eight workers (``worker-<n>``) trying at once, taking turns over ``stores``."""
    contenders = 8
    start = threading.Barrier(contenders)

    def one(index: int) -> bool:
        start.wait()
        return attempt(stores[index % len(stores)], f"worker-{index}")

    with ThreadPoolExecutor(max_workers=contenders) as pool:
        return list(pool.map(one, range(contenders)))


def test_stores_racing_for_a_lease_leave_one_owner(new_store: OpenStore) -> None:
    stores = [new_store(), new_store()]

    won = _contend(stores, lambda store, owner: store.acquire_lease("api", owner, 60))

    assert won.count(True) == 1
    assert stores[1].lease_holder("api") == f"worker-{won.index(True)}"


# --- workers: what each command did -------------------------------------------------------


def test_progress_keeps_each_step_once_per_host_in_order(store: Store) -> None:
    assert store.progress("c1") == {}
    for host, step in [
        ("web-1", "drain"),
        ("web-2", "drain"),
        ("web-1", "deploy"),
        ("web-1", "drain"),  # a redelivered command reports a step again
        ("web-1", "undrain"),
    ]:
        store.record_progress("c1", host, step)
    store.record_progress("c2", "web-1", "deploy")

    assert store.progress("c1") == {"web-1": ["drain", "deploy", "undrain"], "web-2": ["drain"]}
    assert store.progress("c2") == {"web-1": ["deploy"]}


def test_steps_done_are_journaled_with_a_workers_reports_in_one_record(store: Store) -> None:
    word = word_key("api", rollback=False, attempt=1)
    store.record_progress("c1", "web-1", "drain")
    done = [StepDone("c1", "web-1", "deploy"), StepDone("c1/undo", "web-2", "drain")]
    store.record_reports(Word("r1", word, T0, [_report()], done))
    store.record_reports(Word("r1", word, T0, done=[StepDone("c1", "web-1", "drain")]))  # again

    assert store.progress("c1") == {"web-1": ["drain", "deploy"]}
    assert store.progress("c1/undo") == {"web-2": ["drain"]}
    assert len(store.timeline("r1")) == 1


def test_a_record_of_many_reports_keeps_them_all_in_order(store: Store) -> None:
    reports = [_report() for _ in range(1_200)]  # more than one slice of a script's stack
    store.record_reports(Word("r1", word_key("api", rollback=False, attempt=1), T0, reports))

    assert store.timeline("r1") == reports


def test_the_first_outcome_of_a_command_is_the_one_kept_and_told(store: Store) -> None:
    first, second = _report(), _report()
    assert store.outcome("c1") is None

    assert store.record_outcome("c1", first) == first
    assert store.record_outcome("c1", second) == first  # the caller learns what was kept
    assert store.record_outcome("c2", second) == second

    assert store.outcome("c1") == first
    assert store.outcome("c2") == second


def test_a_word_keeps_an_outcome_first_or_records_nothing(store: Store) -> None:
    word = word_key("api", rollback=False, attempt=1)
    started, other = _report(), _report()
    done = [StepDone("c1", "web-1", "drain")]

    assert store.record_reports(Word("r1", word, T0, [started], done, keep=("s1", started))) is None
    assert store.outcome("s1") == started
    # Another kept first (a worker whose lease lapsed, say): this word is not recorded.
    late = Word("r1", word, T0, [other], [StepDone("c1", "web-1", "deploy")], keep=("s1", other))
    assert store.record_reports(late) == started

    assert store.outcome("s1") == started
    assert store.timeline("r1") == [started]
    assert store.progress("c1") == {"web-1": ["drain"]}


def test_a_word_recorded_ahead_is_on_record_once_anyone_waits_for_a_write_after_it(
    store: Store,
) -> None:
    word = word_key("api", rollback=False, attempt=1)
    first, second = _report(), _report()
    ahead = store.record_reports_ahead(
        Word("r1", word, T0, [first], [StepDone("c1", "web-1", "drain")])
    )
    # Another thread's write, as the simulator's effect or another component's word.
    with ThreadPoolExecutor(1) as other:
        other.submit(store.record_progress, "c2", "web-9", "deploy").result()

    assert ahead.done()
    assert store.timeline("r1") == [first]
    assert store.progress("c1") == {"web-1": ["drain"]}
    assert store.last_words("r1", [word]) == {word: T0}
    ahead.wait()  # answers at once

    # With no write after it, waiting for it puts it on record.
    store.record_reports_ahead(Word("r1", word, T0, [second])).wait()
    assert store.timeline("r1") == [first, second]


def test_a_word_recorded_ahead_raises_its_error_by_the_time_it_is_waited_for(
    store: Store,
) -> None:
    word = word_key("api", rollback=False, attempt=1)
    with pytest.raises(ValueError, match="time zone"):
        store.record_reports_ahead(Word("r1", word, datetime(2026, 1, 1), [_report()])).wait()

    store.record_progress("c1", "web-1", "drain")  # the next write does not meet it again
    assert store.timeline("r1") == []
    assert store.progress("c1") == {"web-1": ["drain"]}


_WORK = "r1/web/deploy/1"
_WORD = word_key("web", rollback=False, attempt=1)


def _written_ahead_under_a_lost_lease(store: Store) -> tuple[Pending[bool], Pending[None]]:
    """The simulator's change and the next step's word, neither waited for, as a worker
    whose fleet takes no time makes them (the word sent before the change's answer), by
    a worker whose lease another took while it froze."""
    mine = Held("component/r1/web", "worker-a/1")
    assert store.acquire_lease(mine.lease, "worker-b/1", 60)
    change = store.set_host_version(
        "prod", "web", "web-1", "2.0.0", Effect("r1", "web-1", "deploy", mine)
    )
    word = Word("r1", _WORD, T0, [_report()], [StepDone(_WORK, "web-1", "deploy")])
    return change, store.record_reports_ahead(word, mine)


def _nothing_recorded_ahead(store: Store) -> None:
    assert store.host_versions("prod", "web") == {}
    assert store.progress(_WORK) == {}
    assert store.timeline("r1") == []
    assert store.last_words("r1", [_WORD]) == {}


def test_what_a_thread_writes_ahead_under_a_lease_it_lost_is_refused_as_not_held(
    store: Store,
) -> None:
    change, word = _written_ahead_under_a_lost_lease(store)

    # the worker stops as for a lease found lost, not as for a store that failed
    with pytest.raises(NotHeld):
        word.wait()
    with pytest.raises(NotHeld):
        change.wait()
    _nothing_recorded_ahead(store)


def test_a_thread_that_wrote_ahead_under_a_lost_lease_learns_so_at_its_next_write(
    store: Store,
) -> None:
    _written_ahead_under_a_lost_lease(store)

    with pytest.raises(NotHeld):  # the next write it waits for, made after a refusal
        store.record_progress(_WORK, "web-1", "verify")

    _nothing_recorded_ahead(store)
    store.record_progress(_WORK, "web-1", "verify")  # learned: the next is its own
    assert store.progress(_WORK) == {"web-1": ["verify"]}


def test_a_thread_that_forgot_what_it_wrote_ahead_meets_none_of_its_failures(
    store: Store,
) -> None:
    change, _ = _written_ahead_under_a_lost_lease(store)

    store.forget_ahead()  # the command is given up: its lease is another's

    assert change.done()
    store.record_progress("c2", "api-1", "drain")  # the thread's next command's first write
    assert store.progress("c2") == {"api-1": ["drain"]}
    _nothing_recorded_ahead(store)


def _taken_over_from(store: Store, lease: str = "component/r1/web") -> Held:
    """A lease worker-a held and froze past, which worker-b took over; worker-a's hold."""
    assert store.acquire_lease(lease, "worker-a/1", 0.05)
    _eventually(lambda: store.lease_holder(lease) is None)
    assert store.acquire_lease(lease, "worker-b/1", 60)
    return Held(lease, "worker-a/1")


def test_a_word_made_under_a_lease_another_took_over_records_nothing(store: Store) -> None:
    lapsed = _taken_over_from(store)
    started = _report()
    word = Word("r1", _WORD, T0, [started], [StepDone(_WORK, "web-1", "drain")])

    with pytest.raises(NotHeld):
        store.record_reports(word, lapsed)
    with pytest.raises(NotHeld):  # nor what it would keep: the next holder keeps its own
        store.record_reports(replace(word, keep=("s1", started)), lapsed)

    assert store.outcome("s1") is None
    _nothing_recorded_ahead(store)
    holder = Held(lapsed.lease, "worker-b/1")
    assert store.record_reports(replace(word, keep=("s1", started)), holder) is None
    assert store.outcome("s1") == started


def test_a_word_recorded_ahead_keeps_its_outcome_first_or_is_refused(store: Store) -> None:
    started, other = _report(), _report()
    holder = Held("component/r1/web", "worker-a/1")
    assert store.acquire_lease(holder.lease, holder.owner, 60)
    first = Word("r1", _WORD, T0, [started], keep=("s1", started))

    store.record_reports_ahead(first, holder).wait()
    assert store.outcome("s1") == started
    assert store.timeline("r1") == [started]

    late = Word("r1", _WORD, T0, [other], [StepDone(_WORK, "web-1", "drain")], ("s1", other))
    with pytest.raises(NotHeld, match="kept first under s1"):
        store.record_reports_ahead(late, holder).wait()
    assert store.outcome("s1") == started
    assert store.timeline("r1") == [started]
    assert store.progress(_WORK) == {}


def test_what_a_worker_keeps_ahead_under_a_lease_another_took_over_is_refused(
    store: Store,
) -> None:
    lapsed = _taken_over_from(store)
    started = _report()
    word = Word("r1", _WORD, T0, [started], keep=("s1", started))

    with pytest.raises(NotHeld):
        store.record_reports_ahead(word, lapsed).wait()
    assert store.outcome("s1") is None
    assert store.timeline("r1") == []


def test_claiming_work_reads_the_outcome_kept_under_the_key_asked_for(store: Store) -> None:
    started = _report()
    store.record_outcome("s1", started)

    assert store.claim_work("w1", "lease-1", "a", 60, kept="s1").kept == started
    assert store.claim_work("w2", "lease-2", "a", 60, kept="s2").kept is None  # none kept
    assert store.claim_work("w1", "lease-1", "b", 60, kept="s1").kept is None  # held: not told
    assert store.claim_work("w3", "lease-3", "a", 60).kept is None  # not asked


def test_attempts_are_counted_per_command(store: Store) -> None:
    assert [store.count_attempt("m1") for _ in range(3)] == [1, 2, 3]
    assert store.count_attempt("m2") == 1


def test_an_attempt_count_is_forgotten_a_ttl_after_the_last_attempt(
    new_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "ATTEMPT_COUNT_TTL_S", 0.2)
    store = new_store()
    assert [store.count_attempt("m1") for _ in range(2)] == [1, 2]
    time.sleep(0.4)  # waits past the TTL: expiry must have come by then
    assert store.count_attempt("m1") == 1


def test_claiming_work_takes_its_lease_and_counts_an_attempt(store: Store) -> None:
    first = store.claim_work("w1", "lease-1", "worker-a", 60)
    assert first == Claim(outcome=None, taken=True, holder=None, attempts=1)
    assert store.lease_holder("lease-1") == "worker-a"

    assert store.claim_work("w1", "lease-1", "worker-b", 60) == Claim(
        outcome=None, taken=False, holder="worker-a", attempts=0
    )  # held by a live worker: not taken, and no attempt counted
    again = store.claim_work("w1", "lease-1", "worker-a", 60)  # its own: taken again
    assert again == Claim(outcome=None, taken=True, holder=None, attempts=2)


def test_claiming_work_reads_the_release_with_its_component_as_load_does(store: Store) -> None:
    _commit(store, message_id="m1", state=_state())
    journals = ("w1", "w2")
    store.record_progress("w2", "web-1", "drain")

    taken = store.claim_work("w1", "lease-1", "a", 60, journals=journals, component=("r1", "api"))
    held = store.claim_work("w1", "lease-1", "b", 60, component=("r1", "api"))
    unknown = store.claim_work("w3", "lease-3", "a", 60, component=("nope", "api"))
    not_in_it = store.claim_work("w4", "lease-4", "a", 60, component=("r1", "db"))

    assert taken.release == store.load("r1", components=["api"])
    assert taken.journaled == frozenset({"w2"})  # the journals after the release, as before
    assert (held.taken, held.release) == (False, None)  # told only to the taker
    assert unknown.release is None
    assert not_in_it.release == store.load("r1", components=["db"])
    assert not_in_it.release is not None and not_in_it.release.state.components == {}


def test_claiming_work_says_which_of_its_journals_have_entries(store: Store) -> None:
    journals = ("w1", "w1/undo", "w1/other")
    assert (
        store.claim_work("w1", "lease-1", "worker-a", 60, journals=journals).journaled
        == frozenset()
    )
    store.record_reports(Word("r1", "api/forward/1", T0, done=[StepDone("w1", "web-1", "drain")]))
    store.record_progress("w1/other", "web-1", "was")

    taken = store.claim_work("w1", "lease-1", "worker-a", 60, journals=journals)
    held = store.claim_work("w1", "lease-1", "worker-b", 60, journals=journals)

    assert taken.journaled == frozenset({"w1", "w1/other"})
    assert (held.taken, held.journaled) == (False, frozenset())  # told only to the taker


def test_claiming_expired_work_takes_it_over(store: Store) -> None:
    store.claim_work("w1", "lease-1", "worker-a", 0.05)
    _eventually(lambda: store.lease_holder("lease-1") is None)

    taken = store.claim_work("w1", "lease-1", "worker-b", 60)
    assert taken == Claim(outcome=None, taken=True, holder=None, attempts=2)
    assert store.lease_holder("lease-1") == "worker-b"


def test_finished_work_is_told_and_not_taken_again(store: Store) -> None:
    outcome, late = _report(), _report()
    store.claim_work("w1", "lease-1", "worker-a", 60)

    assert store.finish_work("w1", outcome, "lease-1", "worker-a").kept == outcome
    assert store.lease_holder("lease-1") is None  # given up in the same step
    assert store.claim_work("w1", "lease-1", "worker-b", 60) == Claim(
        outcome=outcome, taken=False, holder=None, attempts=0
    )
    assert store.lease_holder("lease-1") is None
    assert store.finish_work("w1", late, "lease-1", "worker-b").kept == outcome  # the first kept


def test_the_last_word_is_recorded_with_the_outcome(store: Store) -> None:
    outcome, reports = _report(), [_report(), _report()]
    word = word_key("api", rollback=False, attempt=1)
    store.claim_work("w1", "lease-1", "worker-a", 60)
    last = Word("r1", word, T0, reports, [StepDone("w1", "web-1", "undrain")])

    assert store.finish_work("w1", outcome, "lease-1", "worker-a", last).kept == outcome

    assert store.timeline("r1") == reports
    assert store.last_words("r1", [word]) == {word: T0}
    assert store.progress("w1") == {"web-1": ["undrain"]}
    assert store.lease_holder("lease-1") is None


def test_a_bad_last_word_finishes_nothing(store: Store) -> None:
    store.claim_work("w1", "lease-1", "worker-a", 60)
    naive = Word("r1", word_key("api", rollback=False, attempt=1), datetime(2026, 1, 1))

    with pytest.raises(ValueError, match="time zone"):
        store.finish_work("w1", _report(), "lease-1", "worker-a", naive)

    assert store.outcome("w1") is None
    assert store.lease_holder("lease-1") == "worker-a"


def test_a_worker_whose_lease_was_taken_over_finishes_nothing(store: Store) -> None:
    store.claim_work("w1", "lease-1", "worker-a", 0.05)
    _eventually(lambda: store.lease_holder("lease-1") is None)
    store.claim_work("w1", "lease-1", "worker-b", 60)
    last = Word("r1", _WORD, T0, [_report()], [StepDone("w1", "web-1", "undrain")])

    with pytest.raises(NotHeld):  # the one that took over ends it
        store.finish_work("w1", _report(), "lease-1", "worker-a", last)

    assert store.outcome("w1") is None
    assert store.timeline("r1") == []
    assert store.progress("w1") == {}
    assert store.lease_holder("lease-1") == "worker-b"
    outcome = _report()
    assert store.finish_work("w1", outcome, "lease-1", "worker-b").kept == outcome


def test_work_whose_lease_lapsed_with_no_one_taking_it_over_is_finished(store: Store) -> None:
    store.claim_work("w1", "lease-1", "worker-a", 0.05)
    _eventually(lambda: store.lease_holder("lease-1") is None)
    outcome = _report()

    assert store.finish_work("w1", outcome, "lease-1", "worker-a").kept == outcome
    assert store.claim_work("w1", "lease-1", "worker-b", 60).outcome == outcome


def test_workers_racing_to_claim_leave_one_taker(new_store: OpenStore) -> None:
    stores = [new_store(), new_store()]

    taken = _contend(
        stores, lambda store, owner: store.claim_work("w1", "lease-1", owner, 60).taken
    )

    assert taken.count(True) == 1
    assert stores[0].claim_work("w1", "lease-1", "late", 60).holder == (
        f"worker-{taken.index(True)}"
    )


# --- locks --------------------------------------------------------------------------------


def test_the_first_release_holds_and_the_next_ones_start_when_it_releases(
    store: Store,
) -> None:
    assert store.acquire_locks("A", ["s1", "s2"]) is True
    assert store.acquire_locks("B", ["s2"]) is False
    assert store.acquire_locks("C", ["s1"]) is False
    assert (store.lock_queue("s1"), store.lock_queue("s2")) == (["A", "C"], ["A", "B"])
    assert (store.locks_of("A"), store.locks_of("B")) == (["s1", "s2"], ["s2"])

    assert store.release_locks("A") == ["B", "C"]  # in the order they queued

    assert (store.lock_queue("s1"), store.lock_queue("s2")) == (["C"], ["B"])
    assert store.locks_of("A") == []
    assert (store.acquire_locks("B", ["s2"]), store.acquire_locks("C", ["s1"])) == (True, True)
    assert store.release_locks("B") == []
    assert store.release_locks("C") == []
    assert (store.lock_queue("s1"), store.lock_queue("s2")) == ([], [])


def test_a_release_queued_earlier_goes_first_on_the_keys_it_shares(store: Store) -> None:
    store.acquire_locks("A", ["s1", "s2"])
    assert store.acquire_locks("D", ["s1", "s2"]) is False
    store.acquire_locks("B", ["s2"])
    store.acquire_locks("C", ["s1"])

    assert store.release_locks("A") == ["D"]  # B and C wait behind D, not just A
    assert store.acquire_locks("D", ["s1", "s2"]) is True
    assert store.release_locks("D") == ["B", "C"]


def test_releases_naming_their_keys_in_opposite_orders_do_not_deadlock(store: Store) -> None:
    assert store.acquire_locks("A", ["s1", "s2"]) is True
    assert store.acquire_locks("B", ["s2", "s1"]) is False
    assert (store.lock_queue("s1"), store.lock_queue("s2")) == (["A", "B"], ["A", "B"])
    assert store.release_locks("A") == ["B"]


def test_a_release_starts_only_once_it_heads_every_one_of_its_queues(store: Store) -> None:
    assert store.acquire_locks("A", ["s1"]) is True
    assert store.acquire_locks("B", ["s2"]) is True
    assert store.acquire_locks("C", ["s1", "s2"]) is False
    assert store.acquire_locks("D", ["s2"]) is False  # behind C, though B will go first

    assert store.release_locks("B") == []  # C heads s2 now, but still waits for A on s1
    assert store.lock_queue("s2") == ["C", "D"]
    assert store.release_locks("A") == ["C"]
    assert store.release_locks("C") == ["D"]


def test_acquiring_again_is_safe_and_keeps_the_release_in_its_place(store: Store) -> None:
    store.acquire_locks("A", ["s1"])
    store.acquire_locks("B", ["s1", "s1"])  # a key named twice is queued for once
    store.acquire_locks("C", ["s1"])

    assert store.acquire_locks("B", ["s1"]) is False
    assert store.acquire_locks("A", ["s1"]) is True
    assert store.lock_queue("s1") == ["A", "B", "C"]
    assert store.locks_of("B") == ["s1"]
    assert store.release_locks("A") == ["B"]
    assert store.release_locks("A") == []  # already released: nothing changes
    assert store.lock_queue("s1") == ["B", "C"]


def test_a_release_without_keys_holds_at_once_and_queues_nowhere(store: Store) -> None:
    assert store.acquire_locks("A", []) is True
    assert store.locks_of("A") == []
    assert store.release_locks("A") == []
    assert store.release_locks("never-queued") == []
    assert store.lock_queue("s1") == []


def _holders(store: Store, releases: Sequence[str]) -> set[str]:
    queued = [r for r in releases if store.locks_of(r)]
    return {r for r in queued if all(store.lock_queue(k)[0] == r for k in store.locks_of(r))}


def test_releases_queued_all_at_once_each_get_their_turn(new_store: OpenStore) -> None:
    stores, pick = [new_store(), new_store()], random.Random(7)
    wanted = {f"R{i}": pick.sample(["s1", "s2", "s3", "s4"], pick.randint(1, 3)) for i in range(12)}
    start = threading.Barrier(len(wanted))

    def queue(index_and_release: tuple[int, str]) -> None:
        index, release = index_and_release
        start.wait()
        stores[index % 2].acquire_locks(release, wanted[release])

    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        list(pool.map(queue, enumerate(wanted)))

    done: list[str] = []
    holders = _holders(stores[0], list(wanted))
    while holders:
        held = [k for r in holders for k in wanted[r]]
        assert len(held) == len(set(held)), "two holders share a lock"
        release = min(holders)
        started = stores[len(done) % 2].release_locks(release)
        done.append(release)
        assert set(started) == _holders(stores[0], list(wanted)) - (holders - {release})
        holders = _holders(stores[0], list(wanted))
    assert sorted(done) == sorted(wanted)  # nobody was left waiting: no deadlock


# --- messages nobody could use ----------------------------------------------------------


def test_dead_letters_round_trip_newest_last(store: Store) -> None:
    letters = [
        DeadLetter(
            id="d1", at=T0, reason="not JSON", raw=b"\xff\xfe\x00garbage\x80", source="events"
        ),
        DeadLetter(
            id="d2",
            at=datetime(2026, 3, 2, 8, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
            reason="unknown type 'Nope'",
            raw='{"type": "Nope", "note": "€"}'.encode(),
            source="commands",
        ),
    ]
    for letter in letters:
        store.add_dead_letter(letter)

    assert store.dead_letters() == letters


def _letter(letter_id: str, minute: int = 0) -> DeadLetter:
    at = T0 + timedelta(minutes=minute)
    return DeadLetter(id=letter_id, at=at, reason="bad", raw=b"{", source="events")


def test_dead_letters_are_listed_oldest_first_up_to_a_limit(store: Store) -> None:
    letters = [_letter(f"d{i}", minute=i) for i in range(5)]
    for letter in letters:
        store.add_dead_letter(letter)

    assert store.dead_letters(limit=3) == letters[:3]
    assert store.dead_letters(limit=0) == []
    assert store.dead_letters() == letters


def test_a_dead_letter_is_found_by_id_and_removed_once(store: Store) -> None:
    first, second = _letter("d1"), _letter("d2", minute=1)
    store.add_dead_letter(first)
    store.add_dead_letter(second)
    assert store.dead_letter("nope") is None
    assert store.dead_letter("d2") == second

    assert store.remove_dead_letter("d1") is True
    assert store.remove_dead_letter("d1") is False
    assert store.remove_dead_letter("nope") is False
    assert store.dead_letter("d1") is None
    assert store.dead_letters() == [second]


def test_a_dead_letter_added_again_keeps_its_first_body_and_place(store: Store) -> None:
    store.add_dead_letter(_letter("d1"))
    store.add_dead_letter(_letter("d2", minute=1))
    store.add_dead_letter(_letter("d1", minute=2))

    assert store.dead_letters() == [_letter("d1"), _letter("d2", minute=1)]


# --- many writers -----------------------------------------------------------------------


def _race(stores: Sequence[Store], expected: int, release_id: str = "r1") -> list[CommitResult]:
    """Every store commits a different message on the same revision, all at once."""
    start = threading.Barrier(len(stores))

    def attempt(index: int) -> CommitResult:
        start.wait()
        return _commit(
            stores[index],
            release_id,
            message_id=f"rev{expected}-writer{index}",
            expected=expected,
            state=_state(release_id).model_copy(update={"reason": f"writer {index}"}),
            timeline=[_report(release_id)],
        )

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        return list(pool.map(attempt, range(len(stores))))


def _assert_one_winner_per_round(stores: Sequence[Store], rounds: int = 10) -> None:
    for revision in range(rounds):
        results = _race(stores, expected=revision)
        assert sorted(results) == [CommitResult.COMMITTED, CommitResult.CONFLICT]
    stored = stores[0].load("r1")
    assert stored is not None
    assert stored.revision == rounds
    assert len(stores[0].timeline("r1")) == rounds  # the losers wrote nothing


def test_threads_racing_on_one_store_leave_one_winner(store: Store) -> None:
    _assert_one_winner_per_round([store, store])


def test_stores_racing_on_one_backing_leave_one_winner(new_store: OpenStore) -> None:
    _assert_one_winner_per_round([new_store(), new_store()])


# --- backend specifics ------------------------------------------------------------------


def test_an_unreachable_redis_is_store_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", namespace="drovertest-closed")
    try:
        with pytest.raises(StoreUnavailable):
            store.load("r1")
        with pytest.raises(StoreUnavailable):
            _commit(store, message_id="m1", state=_state())
        with pytest.raises(StoreUnavailable):
            store.pending_outbox()
    finally:
        store.close()


@pytest.mark.broker
def test_redis_keeps_wake_times_as_epoch_seconds_and_attempt_counts_with_a_ttl(
    redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    with (
        closing(RedisStore(redis_url, namespace=namespace)) as store,
        closing(redis.Redis.from_url(redis_url)) as client,
    ):
        _commit(store, message_id="m1", state=_state(), wake_at=T0)
        store.count_attempt("m1")

        assert client.zscore(keys.wake_index, "r1") == T0.timestamp()
        ttl_ms = client.pttl(keys.attempts("m1"))
        assert 0 < ttl_ms <= shared.ATTEMPT_COUNT_TTL_S * 1000


def _journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


def test_sqlite_creates_its_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "drover.db"
    with closing(SqliteStore(str(path))) as store:
        _commit(store, message_id="m1", state=_state())
    assert _journal_mode(path) == "wal"
    with closing(SqliteStore(str(path))) as reopened:  # a second open keeps what was written
        assert reopened.load("r1") is not None


def test_a_locked_sqlite_file_is_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_BUSY_TIMEOUT_S", 0.1)
    path = tmp_path / "drover.db"
    with closing(SqliteStore(str(path))) as store, closing(sqlite3.connect(path)) as other:
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")  # another process, holding the write lock
        with pytest.raises(StoreUnavailable):
            _commit(store, message_id="m1", state=_state())
        other.execute("ROLLBACK")
        assert _commit(store, message_id="m1", state=_state()) is CommitResult.COMMITTED


def test_opening_a_file_another_connection_holds_waits_its_turn(tmp_path: Path) -> None:
    path = tmp_path / "drover.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # a new file, still in rollback-journal mode, being written: SQLite's busy handler
    # does not wait for this one, the store must
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE other (x)")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with closing(SqliteStore(str(path))) as store:
            assert store.load("r1") is None
    finally:
        release.join()
        holder.close()


def _commit_steps(path: str, writer: str, steps: int, start: ProcessBarrier) -> None:
    """In a process of its own: commit ``steps`` messages, reloading on each conflict."""
    start.wait()  # all open the new file at once, too
    store = SqliteStore(path)
    try:
        for step in range(steps):
            result = None
            while result is not CommitResult.COMMITTED:
                stored = store.load("r1")
                result = _commit(
                    store,
                    message_id=f"{writer}-{step}",
                    expected=stored.revision if stored else 0,
                    state=_state(),
                    timeline=[_report()],
                )
                assert result is not CommitResult.DUPLICATE
    finally:
        store.close()


def test_sqlite_processes_sharing_a_file_lose_no_step(tmp_path: Path) -> None:
    path, steps, writers = str(tmp_path / "shared" / "drover.db"), 25, ("a", "b", "c")
    context = get_context("spawn")
    start = context.Barrier(len(writers))
    processes = [
        context.Process(target=_commit_steps, args=(path, writer, steps, start))
        for writer in writers
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=120)
        assert [p.exitcode for p in processes] == [0] * len(writers)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
            process.close()

    with closing(SqliteStore(path)) as store:
        stored, timeline = store.load("r1"), store.timeline("r1")
    assert stored is not None
    assert stored.revision == len(writers) * steps
    assert len(timeline) == len(writers) * steps
