"""What on-call does to releases in flight: abort, see what waits, handle dead letters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kombu.connection import Connection

from orchestrator.bus import Topology
from orchestrator.plans import load_fleet
from orchestrator.saga import ReleaseStatus
from orchestrator.store import Store, open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import drover
from tests.faults.invariants import check_invariants, versions_now, wait_until_ended
from tests.faults.test_faults import CHAIN, FLEET_FILE, steps_done, submit, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    fleet = FLEET_FILE
    if getattr(request, "param", None) == SLOW_API:
        fleet = _with_slow_api(tmp_path_factory.mktemp("fleet"))
    with running_cluster("redis", tmp_path_factory.mktemp("redis"), fleet=fleet) as started:
        yield started


# The fault suite's fleet with api taking 0.4 s a step on each host (6 s in all, not 2):
# an abort sent while api is under way, by a command line that takes a second or more to
# start on a loaded machine, must reach the coordinator before api ends, or web starts.
SLOW_API = "api slowed"


def _with_slow_api(folder: Path) -> Path:
    fleet = yaml.safe_load(FLEET_FILE.read_text())
    fleet["environments"]["staging"]["services"]["api"]["driver"]["latency_ms"] = 400
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    return path


@pytest.fixture
def store(cluster: Cluster) -> Iterator[Store]:
    opened = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
    yield opened
    opened.close()


@pytest.mark.parametrize("cluster", [SLOW_API], indirect=True)
def test_abort_stops_new_steps_and_rolls_back_what_completed(
    cluster: Cluster, store: Store, tmp_path: Path
) -> None:
    fleet = load_fleet(Path(cluster.env["DROVER_FLEET"]))
    before = versions_now(fleet, store)
    release_id = submit(cluster, tmp_path, CHAIN)
    wait_for(lambda: steps_done(store, release_id, "api") >= 1, "api under way")

    result = drover(
        "abort", release_id, "--reason", "checkout errors", "--actor", "alice", env=cluster.env
    )

    assert result.returncode == 0, result.stderr
    ended = wait_until_ended(store, release_id)
    check_invariants(store, fleet, ended, before, ReleaseStatus.ROLLED_BACK)
    assert ended.state.failure == "aborted by alice: checkout errors"
    aborts = [m for m in ended.timeline if m.type == "AbortRelease"]
    assert [m.actor for m in aborts] == ["alice"]
    assert ended.state.components["web"].status == "skipped"


def test_abort_of_an_ended_or_unknown_release_is_refused(cluster: Cluster) -> None:
    result = drover("abort", "R-nothing", env=cluster.env)
    assert result.returncode == 2
    assert "no release" in result.stderr


def test_release_show_says_what_a_queued_release_waits_for(
    cluster: Cluster, store: Store, tmp_path: Path
) -> None:
    # The first holds api (its component waits for an approval) while the test looks.
    gated = {**CHAIN[1], "requires_approval": True}
    first = submit(cluster, tmp_path, [CHAIN[0], gated])
    second = submit(cluster, tmp_path, [{"service": "api", "version": "9.0.0"}])
    wait_for(lambda: any(m.type == "ReleaseQueued" for m in store.timeline(second)), "the queueing")

    shown = json.loads(drover("release", "show", second, "--json", env=cluster.env).stdout)
    text = drover("release", "show", second, env=cluster.env).stdout
    drover("approve", first, env=cluster.env)

    assert shown["state"] == "queued"
    assert shown["waiting_for"] == [first]
    assert f"waiting for: {first}" in text
    assert wait_until_ended(store, second).state.status is ReleaseStatus.SUCCEEDED


def _publish_raw(cluster: Cluster, body: bytes) -> None:
    topology = Topology(cluster.env["DROVER_NAMESPACE"])
    with Connection(cluster.env["DROVER_BROKER_URL"]) as connection:
        connection.Producer().publish(
            body,
            exchange=topology.commands_exchange,
            routing_key="commands",
            content_type="application/json",
            declare=[topology.commands_queue],
        )


def _letters(cluster: Cluster) -> list[dict[str, str]]:
    result = drover("dead-letters", "--json", env=cluster.env)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_dead_letters_can_be_listed_dropped_and_requeued(
    cluster: Cluster, store: Store, tmp_path: Path
) -> None:
    garbage = b"\x00 not a message"
    _publish_raw(cluster, garbage)
    wait_for(lambda: len(_letters(cluster)) == 1, "the dead letter")
    (letter,) = _letters(cluster)
    assert "not JSON" in letter["reason"]

    refused = drover("dead-letters", "requeue", letter["id"], env=cluster.env)
    assert refused.returncode == 2
    assert "drop it" in refused.stderr
    dropped = drover("dead-letters", "drop", letter["id"], env=cluster.env)
    assert dropped.returncode == 0
    assert _letters(cluster) == []

    # A readable message that was dead-lettered goes back where its type goes.
    release_id = submit(cluster, tmp_path, CHAIN[:1])
    wait_until_ended(store, release_id)
    reuse = {
        "id": uuid.uuid4().hex,
        "type": "SubmitRelease",
        "schema_version": 1,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "release_id": release_id,
        "actor": "ci",
        "payload": {"environment": "staging", "components": [{"service": "db", "version": "1"}]},
    }
    _publish_raw(cluster, json.dumps(reuse).encode())
    wait_for(lambda: len(_letters(cluster)) == 1, "the reused id's dead letter")
    (letter,) = _letters(cluster)

    requeued = drover("dead-letters", "requeue", letter["id"], env=cluster.env)

    assert requeued.returncode == 0, requeued.stderr
    assert f"requeued as SubmitRelease of {release_id}" in requeued.stdout
    assert _letters(cluster) == []
    # Consumed again; the coordinator has seen this very message before, so it changes
    # nothing and is not dead-lettered a second time.
    wait_for(lambda: _ready(cluster) == 0, "the requeued message to be consumed")
    time.sleep(1)
    assert _letters(cluster) == []
    assert [m.type for m in store.timeline(release_id)].count("SubmitRelease") == 1


def _ready(cluster: Cluster) -> int:
    rows = json.loads(drover("queues", "--json", env=cluster.env).stdout)
    return sum(row["ready"] for row in rows if row["name"].endswith(".commands"))
