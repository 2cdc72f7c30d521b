"""Bad input: a clear error naming the file, the field and the reason; exit 2; nothing deployed.

The same submissions over the bus, as another service would publish them, end as
``rejected`` releases with the reasons in their timeline; bytes that are not a message
at all are dead-lettered; the coordinator goes on serving either way.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection

from orchestrator.bus import Topology
from orchestrator.store import Store, open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import FIRST_FAILURE, FLEET, clean_env, drover, fleet_versions

VALID = {"environment": "staging", "components": [{"service": "db", "version": "2.0.0"}]}

# name -> (release file text, the field path the error must name, words of the reason)
BAD_RELEASES: dict[str, tuple[str, str, str]] = {
    "unknown service": (
        "environment: staging\ncomponents:\n  - {service: nope, version: '1.0'}\n",
        "components[0].service",
        "unknown service 'nope'",
    ),
    "unknown environment": (
        "environment: moon\ncomponents:\n  - {service: db, version: '1.0'}\n",
        "environment",
        "unknown environment 'moon'",
    ),
    "dependency cycle": (
        "environment: staging\ncomponents:\n"
        "  - {service: db, version: '2.0', depends_on: [api]}\n"
        "  - {service: api, version: '2.0', depends_on: [db]}\n",
        "components",
        "dependency cycle",
    ),
    "duplicate component": (
        "environment: staging\ncomponents:\n"
        "  - {service: db, version: '2.0'}\n  - {service: db, version: '2.1'}\n",
        "components[1].service",
        "already components[0]",
    ),
    "missing version": (
        "environment: staging\ncomponents:\n  - {service: db}\n",
        "components[0].version",
        "Field required",
    ),
    "malformed version": (
        "environment: staging\ncomponents:\n  - {service: db, version: '1.0; rm -rf /'}\n",
        "components[0].version",
        "is not valid",
    ),
    "unknown key": (
        "environment: staging\nstrategy: yolo\ncomponents:\n  - {service: db, version: '2.0'}\n",
        "strategy",
        "unknown field",
    ),
    "malformed yaml": (
        "environment: staging\ncomponents: [\n",
        "",
        "malformed YAML at line",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RELEASES))
def test_drover_run_refuses_bad_release(case: str, tmp_path: Path) -> None:
    text, field, reason = BAD_RELEASES[case]
    release_file = tmp_path / "release.yaml"
    release_file.write_text(text)
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(FLEET))
    before = fleet_versions(env)

    result = drover("run", str(release_file), env=env)

    assert result.returncode == 2
    assert str(release_file) in result.stderr
    assert field in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert fleet_versions(env) == before
    listed = drover("releases", "--json", env=env)
    assert json.loads(listed.stdout) == []  # nothing was even submitted


def test_bad_fleet_file_names_file_and_field(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "environments:\n  staging:\n    services:\n      db:\n"
        "        hosts: [db-1, db-1]\n        driver: {kind: simulated, initial_version: '1'}\n"
    )
    release = tmp_path / "release.yaml"
    release.write_text(json.dumps(VALID))
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(fleet))

    result = drover("run", str(release), env=env)

    assert result.returncode == 2
    assert str(fleet) in result.stderr
    assert "environments.staging.services.db.hosts" in result.stderr


def test_bad_configuration_is_refused_with_the_variable_named(tmp_path: Path) -> None:
    env = clean_env(fleet=str(FLEET), broker_url="kafka://nowhere")
    result = drover("coordinator", env=env)
    assert result.returncode == 2
    assert "DROVER_BROKER_URL" in result.stderr


def test_missing_release_file(tmp_path: Path) -> None:
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(FLEET))
    result = drover("run", str(tmp_path / "absent.yaml"), env=env)
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


# --- over the bus -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster("redis", tmp_path_factory.mktemp("redis")) as started:
        yield started


@pytest.fixture
def store(cluster: Cluster) -> Iterator[Store]:
    opened = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
    yield opened
    opened.close()


def _publish_raw(cluster: Cluster, body: bytes) -> None:
    """Publish bytes to the commands queue the way any other service would."""
    topology = Topology(cluster.env["DROVER_NAMESPACE"])
    with Connection(cluster.env["DROVER_BROKER_URL"]) as connection:
        producer = connection.Producer()
        producer.publish(
            body,
            exchange=topology.commands_exchange,
            routing_key="commands",
            content_type="application/json",
            content_encoding="utf-8",
            declare=[topology.commands_queue],
        )


def _submission(payload: dict[str, Any], release_id: str) -> bytes:
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": "SubmitRelease",
            "schema_version": 1,
            "occurred_at": datetime.now(UTC).isoformat(),
            "release_id": release_id,
            "actor": "ci-pipeline",
            "payload": payload,
        }
    ).encode()


def _wait_for_release(store: Store, release_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = store.load(release_id)
        if stored is not None and stored.state.status.is_terminal:
            return {
                "state": stored.state,
                "timeline": [
                    m.payload.model_dump(mode="json") | {"type": m.type}
                    for m in store.timeline(release_id)
                ],
            }
        time.sleep(0.05)
    raise AssertionError(f"release {release_id} did not end")


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        (
            {**VALID, "components": [{"service": "nope", "version": "1.0"}]},
            "components[0].service",
            "unknown service",
        ),
        (
            {**VALID, "components": [{"service": "db"}]},
            "payload.components[0].version",
            "Field required",
        ),
        ({**VALID, "colour": "blue"}, "payload.colour", "unknown field"),
        ({**VALID, "environment": "moon"}, "environment", "unknown environment"),
    ],
    ids=["unknown service", "missing version", "unknown key", "unknown environment"],
)
def test_bad_submission_over_the_bus_is_rejected_with_reasons(
    cluster: Cluster, store: Store, payload: dict[str, Any], field: str, reason: str
) -> None:
    release_id = f"R-bus-{uuid.uuid4().hex[:8]}"
    _publish_raw(cluster, _submission(payload, release_id))

    ended = _wait_for_release(store, release_id)

    assert ended["state"].status == "rejected"
    rejected = [e for e in ended["timeline"] if e["type"] == "ReleaseRejected"]
    assert len(rejected) == 1
    problems = rejected[0]["problems"]
    assert any(p["path"] == field and reason in p["reason"] for p in problems), problems
    assert not [e for e in ended["timeline"] if e["type"] == "DeployComponent"]
    cluster.assert_alive()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe not json", b'{"hello": "world"}', b'["a list"]', _submission(VALID, "bad id!")],
    ids=["bytes", "wrong shape", "not an object", "bad release id"],
)
def test_undecodable_message_is_dead_lettered_and_the_coordinator_goes_on(
    cluster: Cluster, store: Store, body: bytes, tmp_path: Path
) -> None:
    _publish_raw(cluster, body)

    deadline = time.monotonic() + 30
    while not any(letter.raw == body for letter in store.dead_letters()):
        assert time.monotonic() < deadline, "never dead-lettered"
        time.sleep(0.05)
    cluster.assert_alive()
    after = drover(
        "release",
        "submit",
        str(FIRST_FAILURE.write(tmp_path)),
        "--wait",
        "--json",
        env=cluster.env,
    )
    assert json.loads(after.stdout)["state"] == "rolled_back"  # still deciding releases


def test_a_second_submission_under_a_used_release_id_is_dead_lettered(
    cluster: Cluster, store: Store
) -> None:
    release_id = f"R-bus-{uuid.uuid4().hex[:8]}"
    first = _submission(FIRST_FAILURE_PAYLOAD, release_id)
    _publish_raw(cluster, first)
    _publish_raw(cluster, first)  # the same message again: a duplicate, not a conflict
    ended = _wait_for_release(store, release_id)
    assert ended["state"].status == "rolled_back"
    other = _submission(VALID, release_id)

    _publish_raw(cluster, other)

    deadline = time.monotonic() + 30
    while not any(letter.raw == _reencoded(other) for letter in store.dead_letters()):
        assert time.monotonic() < deadline, "never dead-lettered"
        time.sleep(0.05)
    letters = [letter for letter in store.dead_letters() if release_id.encode() in letter.raw]
    assert [letter.reason for letter in letters] == ["release id already in use"]
    timeline = store.timeline(release_id)
    assert [m.type for m in timeline].count("SubmitRelease") == 1
    assert store.load(release_id).state.status == "rolled_back"  # type: ignore[union-attr]


FIRST_FAILURE_PAYLOAD = {
    "environment": "staging",
    "components": [{"service": "db", "version": "9.0.0-broken"}],
}


def _reencoded(body: bytes) -> bytes:
    from orchestrator.contract import decode

    return decode(body).encode()


@pytest.mark.parametrize(
    ("kind", "payload"),
    [("StartRelease", {}), ("CheckDeadlines", {"now": "2999-01-01T00:00:00+00:00"})],
)
def test_the_coordinators_own_commands_are_refused_from_the_bus(
    cluster: Cluster, store: Store, kind: str, payload: dict[str, Any]
) -> None:
    body = json.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": kind,
            "schema_version": 1,
            "occurred_at": datetime.now(UTC).isoformat(),
            "release_id": f"R-bus-{uuid.uuid4().hex[:8]}",
            "actor": "mallory",
            "payload": payload,
        }
    ).encode()

    _publish_raw(cluster, body)

    deadline = time.monotonic() + 30
    while not any(letter.raw == body for letter in store.dead_letters()):
        assert time.monotonic() < deadline, "never dead-lettered"
        time.sleep(0.05)
    (letter,) = [letter for letter in store.dead_letters() if letter.raw == body]
    assert letter.reason == f"{kind} is the coordinator's own command"
    assert letter.source.endswith(".commands")  # the queue it came from
