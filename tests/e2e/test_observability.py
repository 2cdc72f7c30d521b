"""What on-call sees of a release run by real processes: StatsD packets on a real UDP
socket, and JSON log lines that join a release across the coordinator and the workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import MIDDLE_FAILURE, drover
from tests.support.statsd_listener import StatsdListener

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    with StatsdListener() as listener:
        yield listener


@pytest.fixture(scope="module")
def cluster(statsd: StatsdListener, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("observability")
    settings = {"statsd_host": "127.0.0.1", "statsd_port": str(statsd.port)}
    with running_cluster("redis", logs, **settings) as started:
        yield started


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The middle-failure scenario: api fails its verify; db and cache are rolled back."""
    path = MIDDLE_FAILURE.write(tmp_path_factory.mktemp("release"))
    result = drover("release", "submit", str(path), "--wait", "--json", env=cluster.env)
    assert result.returncode == 1, result.stderr
    return dict(json.loads(result.stdout))


def test_steps_components_and_the_release_are_counted_and_timed(
    statsd: StatsdListener, release: dict[str, Any]
) -> None:
    statsd.wait_for_name("drover.staging.release.rolled_back")
    names = {(p.name, p.type) for p in statsd.packets}

    # From the workers: steps by outcome, their timers, rollbacks, drains.
    assert ("drover.staging.db.step.deploy.succeeded", "c") in names
    assert ("drover.staging.db.step.deploy", "ms") in names
    assert ("drover.staging.api.step.verify.failed", "c") in names
    assert ("drover.staging.db.step.rollback_deploy.succeeded", "c") in names
    assert ("drover.staging.db.drain", "ms") in names
    assert ("drover.staging.api.component.failed", "c") in names
    assert ("drover.staging.db.component.rolled_back", "c") in names
    # From the coordinator: the release's outcome and how long it took.
    assert ("drover.staging.release.rolled_back", "c") in names
    assert ("drover.staging.release.duration.rolled_back", "ms") in names


def test_no_metric_name_carries_a_release_id(
    statsd: StatsdListener, release: dict[str, Any]
) -> None:
    statsd.wait_for_name("drover.staging.release.rolled_back")

    assert all(release["id"].lower() not in p.name for p in statsd.packets)
    assert all(p.type != "invalid" for p in statsd.packets)


def test_log_lines_of_one_release_join_across_processes(
    cluster: Cluster, release: dict[str, Any]
) -> None:
    logged = {name: _json_lines(cluster.logs / f"{name}.log") for name in cluster.processes}
    ours = {
        name: [entry for entry in found if entry.get("release_id") == release["id"]]
        for name, found in logged.items()
    }
    coordinator = ours["coordinator"]
    workers = [e for name, found in ours.items() if name.startswith("worker") for e in found]

    assert coordinator, "the coordinator logged nothing for the release"
    assert workers, "no worker logged anything for the release"
    failed = [e for e in workers if e.get("event") == "step failed"]
    assert failed and all(e["service"] == "api" and e["step"] == "verify" for e in failed)
    assert all("message_id" in e for e in workers)
    # The coordinator's lines name who sent what it handled: the workers, among others.
    senders = {e["actor"] for e in coordinator if "actor" in e}
    assert any(actor.startswith("drover-worker-") for actor in senders)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # Celery's own start-up banner and the like
        if isinstance(entry, dict):
            found.append(entry)
    return found
