"""The three scenarios with every role a separate process, started through the CLI.

One coordinator and two workers (one for every service, one for api and db only, so two
processes compete for those queues) over a real broker: Redis, then RabbitMQ. The store
is Redis in both cases, as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.bus import Topology
from orchestrator.plans import load_fleet
from orchestrator.store import open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import BROKERS, Cluster, running_cluster
from tests.e2e.scenarios import (
    FLEET,
    SCENARIOS,
    SUCCESS,
    Scenario,
    check_effects_once,
    drover,
    fleet_versions,
    run_and_check,
)
from tests.support.listening import drain, listen, messages

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module", params=sorted(BROKERS))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with running_cluster(request.param, tmp_path_factory.mktemp(request.param)) as started:
        yield started


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_release_across_processes(cluster: Cluster, scenario: Scenario, tmp_path: Path) -> None:
    before = fleet_versions(cluster.env)

    release = drover(
        "release",
        "submit",
        str(scenario.write(tmp_path)),
        "--wait",
        "--json",
        "--timeout",
        "90",
        env=cluster.env,
    )

    cluster.assert_alive()
    view = run_and_check(scenario, release, before, cluster.env)
    store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
    try:
        check_effects_once(store.effects(view["id"]))
    finally:
        store.close()
    shown = drover("release", "show", view["id"], "--json", env=cluster.env)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["state"] == scenario.final_state


def test_step_reports_reach_listeners_and_the_timeline_but_not_the_coordinator(
    cluster: Cluster, tmp_path: Path
) -> None:
    topology, url = Topology(cluster.env["DROVER_NAMESPACE"]), cluster.env["DROVER_BROKER_URL"]
    # Two listeners of one's own: every step report, and all the coordinator is sent.
    progress = listen(url, topology.progress_exchange, "Progress.*")
    events = listen(url, topology.events_exchange, "#")
    scenario = str(SUCCESS.write(tmp_path))
    release = drover("release", "submit", scenario, "--wait", "--json", env=cluster.env)
    heard, told = messages(drain(url, progress)), messages(drain(url, events))
    assert release.returncode == 0, release.stderr
    release_id = json.loads(release.stdout)["id"]

    store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
    try:
        timeline = store.timeline(release_id)
    finally:
        store.close()
    reports = [m for m in timeline if m.type in _PROGRESS]
    assert {m.type for m in reports} >= {"ComponentStarted", "StepStarted", "StepSucceeded"}
    assert sorted(m.id for m in heard if m.release_id == release_id) == sorted(
        m.id for m in reports
    )
    assert {m.type for m in told if m.release_id == release_id} & _PROGRESS == set()
    assert "ReleaseSucceeded" in {m.type for m in told}


_PROGRESS = {
    "ComponentStarted",
    "ComponentWaiting",
    "StepStarted",
    "StepSucceeded",
    "StepFailed",
    "HostDrained",
    "GateJudged",
}


def test_releases_lists_newest_first(cluster: Cluster, tmp_path: Path) -> None:
    first = drover(
        "release", "submit", str(SCENARIOS[2].write(tmp_path)), "--json", env=cluster.env
    )
    second = drover(
        "release", "submit", str(SCENARIOS[2].write(tmp_path)), "--wait", "--json", env=cluster.env
    )
    listed = drover("releases", "--json", env=cluster.env)
    ids = [r["id"] for r in json.loads(listed.stdout)]
    assert ids.index(json.loads(second.stdout)["id"]) < ids.index(json.loads(first.stdout)["id"])


def test_queues_report_every_drover_queue(cluster: Cluster) -> None:
    result = drover("queues", "--json", env=cluster.env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    namespace = cluster.env["DROVER_NAMESPACE"]
    services = [f"svc.{name}" for name in load_fleet(FLEET).service_names()]
    expected = {f"{namespace}.{q}" for q in ["commands", "coordinator", *services]}
    assert set(rows) == expected
    for row in rows.values():
        assert set(row) >= {"name", "ready", "unacked", "consumers"}
        assert row["ready"] == 0  # nothing is waiting once every release has ended
    if cluster.env["DROVER_BROKER_URL"].startswith("amqp"):
        assert rows[f"{namespace}.svc.api"]["consumers"] == 2
        assert rows[f"{namespace}.coordinator"]["consumers"] == 1
