"""What on-call asks, answered by the real command against real processes on RabbitMQ
(the broker that can count consumers): the light and each reason it turns, the queues,
and one release watched live."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tests.conftest import AMQP_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import FIRST_FAILURE, SUCCESS, drover

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("oncall")
    with running_cluster("rabbitmq", logs, workers={"worker": ("all",)}) as started:
        _wait_for_consumers(started)
        yield started


def _wait_for_consumers(cluster: Cluster) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = queues(cluster)
        if all(row["consumers"] for row in rows):
            return
        time.sleep(0.3)
    raise AssertionError(f"not every queue has a consumer: {rows}")


def queues(cluster: Cluster) -> list[dict[str, Any]]:
    result = drover("queues", "--json", env=cluster.env)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = drover("status", "--json", env=env)
    return result.returncode, json.loads(result.stdout)


def whats(found: dict[str, Any]) -> set[str]:
    return {reason["what"] for reason in found["reasons"]}


def test_an_idle_healthy_cluster_is_green(cluster: Cluster) -> None:
    assert status(cluster.env) == (0, {"light": "green", "reasons": []})


def test_an_unreachable_broker_is_red(cluster: Cluster) -> None:
    env = {**cluster.env, "DROVER_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}

    code, found = status(env)

    assert (code, found["light"]) == (2, "red")
    assert "unreachable" in whats(found)
    assert "broker" in found["reasons"][0]["detail"]


def test_a_dead_letter_turns_it_amber_until_dropped(cluster: Cluster) -> None:
    namespace = cluster.env["DROVER_NAMESPACE"]
    with Connection(AMQP_URL) as connection:
        producer = connection.Producer()
        producer.publish(b"not a message", exchange=f"{namespace}.commands", routing_key="commands")
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not letters and time.monotonic() < deadline:
        letters = json.loads(drover("dead-letters", "--json", env=cluster.env).stdout)
        time.sleep(0.2)

    code, found = status(cluster.env)

    assert (code, found["light"], whats(found)) == (1, "amber", {"dead letters"})
    drover("dead-letters", "drop", letters[0]["id"], env=cluster.env)
    assert status(cluster.env)[0] == 0


def test_a_worker_gone_with_work_waiting_is_red_and_says_which_queue(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.kill("worker")
    try:
        submitted = drover(
            "release", "submit", str(SUCCESS.write(tmp_path)), "--json", env=cluster.env
        )
        release_id = json.loads(submitted.stdout)["id"]
        found: dict[str, Any] = {"reasons": []}
        deadline = time.monotonic() + 20
        while "no consumer" not in whats(found) and time.monotonic() < deadline:
            code, found = status(cluster.env)
            time.sleep(0.3)

        assert (code, found["light"]) == (2, "red")
        (reason,) = [
            r for r in found["reasons"] if r["what"] == "no consumer" and r["light"] == "red"
        ][:1]
        assert ".svc." in reason["detail"] and "a worker down" in reason["detail"]
        waiting = {row["name"]: row for row in queues(cluster)}
        assert any(row["ready"] and row["oldest_age_s"] is not None for row in waiting.values())
        # Tighter limits, and a little patience, turn the rest of the light's reasons on.
        time.sleep(2)
        tight = ["--stuck-after", "1", "--old-after", "1", "--backing-up-over", "0"]
        result = drover("status", "--json", *tight, env=cluster.env)
        strict = json.loads(result.stdout)
        assert result.returncode == 2
        assert {"release stuck", "queue old", "queue backing up"} <= whats(strict)
    finally:
        cluster.restart("worker")

    watched = drover("watch", release_id, "--every", "0.2", env=cluster.env, timeout_s=120)
    assert watched.returncode == 0, watched.stderr
    last_view = watched.stdout.strip().split("\n\n")[-1]
    assert f"{release_id} staging: succeeded" in last_view
    assert "5 of 5 components deployed" in last_view


def test_a_rolled_back_release_is_amber_and_watch_exits_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    result = drover(
        "release", "submit", str(FIRST_FAILURE.write(tmp_path)), "--wait", "--json", env=cluster.env
    )
    release_id = json.loads(result.stdout)["id"]

    code, found = status(cluster.env)
    watched = drover("watch", release_id, env=cluster.env)

    assert (code, found["light"]) == (1, "amber")
    assert "release rolled back" in whats(found)
    assert watched.returncode == 1
    assert "compensations:" in watched.stdout
    assert "FAILED" in watched.stdout  # the step that failed, in the component's line


def test_watch_of_an_unknown_release_is_refused(cluster: Cluster) -> None:
    result = drover("watch", "R-nope", env=cluster.env)

    assert result.returncode == 2
    assert "no release 'R-nope'" in result.stderr


def test_a_release_waiting_for_a_person_is_amber_until_approved(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "gated.yaml"
    gated = {"service": "cache", "version": "8.0.0", "requires_approval": True}
    path.write_text(json.dumps({"environment": "staging", "components": [gated]}))
    submitted = drover("release", "submit", str(path), "--json", env=cluster.env)
    release_id = json.loads(submitted.stdout)["id"]
    found: dict[str, Any] = {"reasons": []}
    deadline = time.monotonic() + 20
    while "waiting for a person" not in whats(found) and time.monotonic() < deadline:
        _, found = status(cluster.env)
        time.sleep(0.2)

    waiting = [r for r in found["reasons"] if r["what"] == "waiting for a person"]
    assert waiting and "cache (to start)" in waiting[0]["detail"]
    assert drover("approve", release_id, env=cluster.env).returncode == 0
    assert drover("watch", release_id, env=cluster.env).returncode == 0
