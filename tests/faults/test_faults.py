"""The fault suite: real processes killed by signal, brokers restarted, messages doubled.

Every scenario ends with the same invariants (``invariants.py``), read from the store and
the simulator's host state, never from what the processes say about themselves.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.fleet import Fleet
from orchestrator.plans import load_fleet
from orchestrator.saga import ReleaseStatus
from orchestrator.store import Store, open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import drover
from tests.faults.invariants import (
    Ended,
    check_invariants,
    versions_now,
    wait_until_ended,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.broker

FLEET_FILE = Path(__file__).with_name("fleet.yaml")
# Small enough that a dead worker's component is taken over within seconds.
FAST = {"lease_ttl_s": "3", "redis_visibility_timeout_s": "4"}
TWO_WORKERS = {"worker-1": ("all",), "worker-2": ("all",)}

CHAIN = [
    {"service": "db", "version": "2.0.0"},
    {"service": "api", "version": "2.0.0", "depends_on": ["db"]},
    {"service": "web", "version": "2.0.0", "depends_on": ["api"]},
    {"service": "cache", "version": "2.0.0"},
]
# api fails verification on api-3: db and cache are rolled back, web never starts.
FAILING = [
    {"service": "db", "version": "3.0.0"},
    {"service": "cache", "version": "3.0.0"},
    {"service": "api", "version": "6.6.6-broken", "depends_on": ["db"]},
    {"service": "web", "version": "3.0.0", "depends_on": ["api", "cache"]},
]


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(FLEET_FILE)


@contextmanager
def drover_cluster(
    broker: str, tmp_path_factory: pytest.TempPathFactory, **options: Any
) -> Iterator[tuple[Cluster, Store]]:
    options.setdefault("workers", TWO_WORKERS)
    with running_cluster(
        broker, tmp_path_factory.mktemp(broker), fleet=FLEET_FILE, **FAST, **options
    ) as cluster:
        store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
        try:
            yield cluster, store
        finally:
            store.close()


def submit(cluster: Cluster, folder: Path, components: list[dict[str, Any]]) -> str:
    path = folder / f"release-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"environment": "staging", "components": components}))
    result = drover("release", "submit", str(path), "--json", env=cluster.env)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def steps_done(store: Store, release_id: str, service: str) -> int:
    return sum(
        1
        for m in store.timeline(release_id)
        if m.type == "StepSucceeded" and getattr(m.payload, "service", "") == service
    )


def worker_holding(cluster: Cluster, store: Store, release_id: str, service: str) -> str:
    """The name of the worker process that holds the component's lease now."""
    holder = store.lease_holder(f"component/{release_id}/{service}")
    assert holder is not None
    match = re.match(r"drover-worker-(\d+)@", holder)
    assert match, holder
    return cluster.name_of(int(match.group(1)))


def ended_correctly(
    store: Store, fleet: Fleet, release_id: str, before: Any, expected: ReleaseStatus
) -> Ended:
    ended = wait_until_ended(store, release_id, timeout_s=120)
    check_invariants(store, fleet, ended, before, expected)
    return ended


# --- 1. workers killed ----------------------------------------------------------------------


def test_worker_killed_in_the_middle_of_a_batch(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, CHAIN)
        wait_for(lambda: steps_done(store, release_id, "api") >= 2, "api under way")
        victim = worker_holding(cluster, store, release_id, "api")

        cluster.kill(victim)
        cluster.restart(victim)

        ended_correctly(store, fleet, release_id, before, ReleaseStatus.SUCCEEDED)


def test_worker_killed_while_its_canary_waits_for_a_person(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, [{"service": "canary", "version": "2.0.0"}])
        wait_for(lambda: status(store, release_id) is ReleaseStatus.PAUSED, "the canary held")
        victim = worker_holding(cluster, store, release_id, "canary")

        cluster.kill(victim)
        cluster.restart(victim)
        approved = drover("approve", release_id, "--actor", "bob", env=cluster.env)

        assert approved.returncode == 0, approved.stderr
        # The worker that takes over finds the canary's batch in the journal (it is not
        # deployed again: the invariants count effects), asks again, and is let go on.
        ended = ended_correctly(store, fleet, release_id, before, ReleaseStatus.SUCCEEDED)
        assert [m.type for m in ended.timeline].count("ReleaseApproved") == 1


def status(store: Store, release_id: str) -> ReleaseStatus | None:
    stored = store.load(release_id)
    return stored.state.status if stored else None


@pytest.mark.parametrize("point", ["worker.after_effect:6", "worker.before_ack:2"])
def test_worker_killed_between_an_effect_and_its_record(
    broker: str,
    point: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: Fleet,
) -> None:
    with drover_cluster(broker, tmp_path_factory, workers={}) as (cluster, store):
        cluster.start("worker-1", "worker", "--service", "all", crash_at=point)
        cluster.start("worker-2", "worker", "--service", "all", crash_at=point)
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, FAILING)

        wait_for(lambda: cluster.exited("worker-1") or cluster.exited("worker-2"), "a crash")
        for name in ("worker-1", "worker-2"):
            if cluster.exited(name):
                cluster.restart(name)

        ended_correctly(store, fleet, release_id, before, ReleaseStatus.ROLLED_BACK)


# --- 2. the coordinator killed --------------------------------------------------------------


@pytest.mark.parametrize(
    "point",
    [
        "coordinator.after_commit:4",  # state stored, nothing published
        # published, not marked as sent: the release's first event, the commands of its
        # commit not yet published (on a Redis the store shares, they wait on their
        # queues already: the commit pushed them, and only events are published after)
        "coordinator.after_publish:1",
        "coordinator.after_commit@compensating:2",  # in the middle of compensating
    ],
)
def test_coordinator_killed_at_the_worst_moments(
    broker: str,
    point: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: Fleet,
) -> None:
    drills = {"crash_at": point}
    with drover_cluster(broker, tmp_path_factory, coordinator_drills=drills) as (
        cluster,
        store,
    ):
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, FAILING)

        wait_for(lambda: cluster.exited("coordinator"), "the coordinator's crash")
        cluster.restart("coordinator")

        ended_correctly(store, fleet, release_id, before, ReleaseStatus.ROLLED_BACK)


# --- 3 and 9. the broker restarted, alone or with everything else ---------------------------


@contextmanager
def restartable_broker(
    broker: str, folder: Path
) -> Iterator[tuple[str | None, Callable[[], None]]]:
    """The broker's URL (None: the machine's own) and a function that restarts it."""
    if broker == "redis":
        own = RedisServer(folder)
        own.start()
        try:
            yield own.url, lambda: (own.kill(), own.start())
        finally:
            own.kill()
        return
    yield None, _restart_rabbitmq


def _restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)


def test_broker_restarted_in_the_middle_of_a_release(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with (
        restartable_broker(broker, tmp_path) as (url, restart),
        drover_cluster(broker, tmp_path_factory, broker_url=url) as (cluster, store),
    ):
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, CHAIN)
        wait_for(lambda: steps_done(store, release_id, "api") >= 1, "api under way")

        restart()
        # Celery's worker can die of its own Redis reconnection race ("Unrecoverable
        # error: ... 'NoneType' object has no attribute ..."); a supervisor restarts it,
        # and so does this test. Drover's own coordinator must ride the restart out.
        wait_for(lambda: _supervise(cluster) or _ended(store, release_id), "the end", 120)

        ended_correctly(store, fleet, release_id, before, ReleaseStatus.SUCCEEDED)
        assert not cluster.exited("coordinator")


def _supervise(cluster: Cluster) -> bool:
    """Restart any worker that has exited, as a process supervisor would."""
    for name in [n for n in cluster.processes if n.startswith("worker")]:
        if cluster.exited(name):
            cluster.restart(name)
    return False


def _ended(store: Store, release_id: str) -> bool:
    stored = store.load(release_id)
    return stored is not None and stored.state.status.is_terminal


def test_broker_coordinator_and_workers_killed_together(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with (
        restartable_broker(broker, tmp_path) as (url, restart),
        drover_cluster(broker, tmp_path_factory, broker_url=url) as (cluster, store),
    ):
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, FAILING)
        wait_for(lambda: steps_done(store, release_id, "api") >= 2, "api under way")

        names = list(cluster.processes)
        for name in names:
            cluster.kill(name)
        restart()
        for name in names:
            cluster.restart(name)

        ended_correctly(store, fleet, release_id, before, ReleaseStatus.ROLLED_BACK)


# --- 4. every message twice; events out of order ------------------------------------------

BOTH_ENDINGS = pytest.mark.parametrize(
    ("components", "expected"),
    [(CHAIN, ReleaseStatus.SUCCEEDED), (FAILING, ReleaseStatus.ROLLED_BACK)],
    ids=["succeeds", "rolls-back"],
)


def release_under_drill(
    broker: str,
    components: list[dict[str, Any]],
    expected: ReleaseStatus,
    folders: tuple[Path, pytest.TempPathFactory],
    fleet: Fleet,
    **drill: str,
) -> Ended:
    """One release with a bus drill in every process; the invariants checked."""
    folder, factory = folders
    with drover_cluster(broker, factory, **drill) as (cluster, store):
        before = versions_now(fleet, store)
        release_id = submit(cluster, folder, components)
        return ended_correctly(store, fleet, release_id, before, expected)


@BOTH_ENDINGS
def test_every_message_delivered_twice(
    broker: str,
    components: list[dict[str, Any]],
    expected: ReleaseStatus,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: Fleet,
) -> None:
    folders = (tmp_path, tmp_path_factory)
    release_under_drill(
        broker, components, expected, folders, fleet, drill_duplicate_publishes="true"
    )


@BOTH_ENDINGS
def test_events_delivered_out_of_order(
    broker: str,
    components: list[dict[str, Any]],
    expected: ReleaseStatus,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: Fleet,
) -> None:
    folders = (tmp_path, tmp_path_factory)
    # Flag flips side by side: outcomes close together, for the drill to shuffle (what a
    # worker sends the coordinator is its outcomes; its step reports go to the store).
    # Ten, made within milliseconds of each other and each held back a random time up to
    # 400 ms: that they arrive in the order they happened is a chance of one in 10!
    # (3.6 million). Six made it one in 720, and a run of CI met it.
    flips = [{"service": "cache", "flag": f"shuffled-{n}"} for n in range(10)]
    ended = release_under_drill(
        broker, components + flips, expected, folders, fleet, drill_reorder_events_ms="400"
    )
    # The drill did shuffle them: the coordinator took the workers' outcomes in an order
    # other than the one they happened in.
    outcomes = [m.occurred_at for m in ended.timeline if m.type in _OUTCOMES]
    assert outcomes != sorted(outcomes), "no outcome arrived out of order"


_OUTCOMES = {
    "ComponentDeployed",
    "ComponentFailed",
    "ComponentRolledBack",
    "ComponentRollbackFailed",
    "FlagToggled",
    "FlagToggleFailed",
}


# --- 5. a worker silent past its deadline, then late -----------------------------------------


def test_worker_silent_past_the_deadline_then_late(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        before = versions_now(fleet, store)
        release_id = submit(
            cluster,
            tmp_path,
            [
                {"service": "cache", "version": "4.0.0"},
                {"service": "sleepy", "version": "7.0.0-stalls", "depends_on": ["cache"]},
            ],
        )
        ended = ended_correctly(store, fleet, release_id, before, ReleaseStatus.ROLLED_BACK)

        sleepy = [m.type for m in ended.timeline if getattr(m.payload, "service", "") == "sleepy"]
        assert sleepy.count("DeadlinePassed") == 1
        # The rollback waited for the stalled deploy instead of running beside it ...
        assert "ComponentWaiting" in sleepy
        # ... whose late report was heard and ignored, and then it put the host back.
        assert sleepy.index("ComponentDeployed") < sleepy.index("ComponentRolledBack")
        assert ended.state.components["sleepy"].status == "rolled_back"


# --- 6. two coordinators at once --------------------------------------------------------------


def test_two_coordinators_at_once(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        cluster.start("coordinator-2", "coordinator")
        before = versions_now(fleet, store)
        failing = submit(cluster, tmp_path, FAILING)
        ended_correctly(store, fleet, failing, before, ReleaseStatus.ROLLED_BACK)
        succeeding = submit(cluster, tmp_path, CHAIN)
        ended_correctly(store, fleet, succeeding, before, ReleaseStatus.SUCCEEDED)
        cluster.assert_alive()


# --- 10. two releases for the same service ----------------------------------------------------


def test_releases_for_the_same_service_never_interleave(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        before = versions_now(fleet, store)
        first = submit(cluster, tmp_path, CHAIN[:2])  # db, api
        second = submit(cluster, tmp_path, [{"service": "api", "version": "5.0.0"}])

        one = ended_correctly(store, fleet, first, before, ReleaseStatus.SUCCEEDED)
        two = wait_until_ended(store, second)

        assert two.state.status is ReleaseStatus.SUCCEEDED
        queued = [m for m in two.timeline if m.type == "ReleaseQueued"]
        assert [m.payload.behind for m in queued] == [(first,)]  # type: ignore[union-attr]
        first_end = next(m.occurred_at for m in one.timeline if m.type == "ReleaseSucceeded")
        second_start = next(m.occurred_at for m in two.timeline if m.type == "DeployComponent")
        assert second_start >= first_end
        assert set(versions_now(fleet, store)["api"].values()) == {"5.0.0"}


# --- 7. poison messages for the workers --------------------------------------------------------


@pytest.mark.parametrize(
    "argument",
    [{"hello": "world"}, "not an envelope", {"id": "x", "type": "DeployComponent"}],
    ids=["wrong shape", "a string", "half an envelope"],
)
def test_poison_command_is_dead_lettered_and_workers_go_on(
    broker: str,
    argument: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: Fleet,
) -> None:
    from orchestrator.bus import DEPLOY_TASK, Topology
    from workers.app import create_celery

    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        celery = create_celery(cluster.env["DROVER_BROKER_URL"], "poison", 300)
        topology = Topology(cluster.env["DROVER_NAMESPACE"])
        celery.send_task(DEPLOY_TASK, args=[argument], queue=topology.service_queue("db"))
        celery.close()

        wait_for(lambda: bool(store.dead_letters()), "the dead letter")
        cluster.assert_alive()
        before = versions_now(fleet, store)
        release_id = submit(cluster, tmp_path, CHAIN)
        ended_correctly(store, fleet, release_id, before, ReleaseStatus.SUCCEEDED)


# --- a command that kills every worker that starts it --------------------------------------


def test_command_started_too_often_is_dead_lettered_and_its_component_failed(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with drover_cluster(broker, tmp_path_factory, workers={}, delivery_limit="1") as (
        cluster,
        store,
    ):
        cluster.start("worker-1", "worker", "--service", "all", crash_at="worker.after_effect:1")
        release_id = submit(cluster, tmp_path, [{"service": "db", "version": "2.0.0"}])
        wait_for(lambda: cluster.exited("worker-1"), "the first attempt to kill its worker")

        cluster.restart("worker-1")  # the second attempt is one more than the limit

        ended = wait_until_ended(store, release_id)
        assert ended.state.status is ReleaseStatus.FAILED  # db-1 may be half done: a human
        assert "started 2 times" in ended.state.components["db"].reason
        letters = store.dead_letters()
        assert [letter.reason for letter in letters] == [
            "started 2 times without finishing; dead-lettered"
        ]
        cluster.assert_alive()


# --- a rollback that keeps failing ------------------------------------------------------------


def test_rollback_that_keeps_failing_ends_failed_naming_what_needs_a_human(
    broker: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with drover_cluster(broker, tmp_path_factory) as (cluster, store):
        release_id = submit(
            cluster,
            tmp_path,
            [
                {"service": "brittle", "version": "2.0.0"},
                {"service": "api", "version": "6.6.6-broken", "depends_on": ["brittle"]},
            ],
        )
        ended = wait_until_ended(store, release_id)

        assert ended.state.status is ReleaseStatus.FAILED
        brittle = [m for m in ended.timeline if getattr(m.payload, "service", "") == "brittle"]
        failed_tries = [
            m for m in brittle if m.type == "StepFailed" and getattr(m.payload, "rollback", False)
        ]
        assert len(failed_tries) == 3  # tried again, with backoff, before giving up
        (ending,) = [m for m in ended.timeline if m.type == "ReleaseFailed"]
        assert any("brittle" in item for item in ending.payload.needs_attention)  # type: ignore[union-attr]
        (gave_up,) = [m for m in brittle if m.type == "ComponentRollbackFailed"]
        assert "brittle-2" in gave_up.payload.hosts  # type: ignore[union-attr]
        # Nothing further is done to it: no rollback is sent again.
        assert [m.type for m in brittle].count("RollbackComponent") == 1
        # And on-call's light says so, naming the release.
        light = drover("status", "--json", env=cluster.env)
        found = json.loads(light.stdout)
        assert (light.returncode, found["light"]) == (2, "red")
        (failed,) = [r for r in found["reasons"] if r["what"] == "release failed"]
        assert release_id in failed["detail"]
