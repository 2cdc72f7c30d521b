"""The depth and age of every Drover queue, read from real brokers: Redis and RabbitMQ.

Messages are published with the project's bus (commands, and Celery tasks for a
service), taken by a real consumer without acknowledging them, and counted again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer

from orchestrator import queues as queues_module
from orchestrator.bus import BrokerUnavailable
from orchestrator.contract import AbortRelease, DeployComponent, Envelope, envelope
from orchestrator.plans import load_fleet
from orchestrator.queues import QueueDepth, queue_depths
from orchestrator.runtime import Parts, connect
from orchestrator.settings import Settings
from tests.support.listening import connected_parts, forget_on_rabbitmq

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"
WAIT_S = 0.4  # how long messages wait before their age is read
Take = Callable[[Queue], Any]


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")  # deletes the namespace's lists after
        yield url
        _forget_redis_bindings(url, namespace)
    else:
        url = request.getfixturevalue("amqp_url")
        yield url
        forget_on_rabbitmq(url, namespace, FLEET)


@pytest.fixture
def parts(broker_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(broker_url, namespace, tmp_path, FLEET) as connected:
        yield connected


def _forget_redis_bindings(url: str, namespace: str) -> None:
    # kombu's binding tables are named after exchanges: "_kombu.binding.<exchange>".
    client = redis.Redis.from_url(url)
    for pattern in (f"_kombu.binding.{namespace}*", f"_kombu.binding_permanent.{namespace}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


# --- helpers ---------------------------------------------------------------------------


def _rows(parts: Parts) -> dict[str, QueueDepth]:
    return {row["name"]: row for row in queue_depths(parts)}


def _command(n: int) -> Envelope:
    return envelope(AbortRelease(reason=f"test {n}"), release_id=f"R-{n}", actor="test")


def _publish_commands(parts: Parts, count: int) -> list[str]:
    sent = [_command(n) for n in range(count)]
    for message in sent:
        parts.bus.publish(message)
    return [m.id for m in sent]


@contextmanager
def _consumer(parts: Parts) -> Iterator[Take]:
    """Takes one message at a time off a queue, as a consumer, leaving it unacknowledged."""
    with Connection(parts.settings.broker_url) as connection:
        channel = connection.channel()

        def take(queue: Queue) -> Any:
            message = queue.bind(channel).get(no_ack=False)
            assert message is not None, f"nothing to take from {queue.name}"
            return message

        yield take


def _is_redis(parts: Parts) -> bool:
    return parts.settings.broker_url.startswith("redis")


def _in_flight(parts: Parts, count: int) -> int | None:
    # The management API is off on this RabbitMQ: in-flight messages cannot be counted.
    return count if _is_redis(parts) else None


def _source(parts: Parts) -> str:
    return "redis" if _is_redis(parts) else "rabbitmq-passive"


def _age(row: QueueDepth) -> float:
    assert row["oldest_age_s"] is not None, row
    return row["oldest_age_s"]


# --- both brokers ----------------------------------------------------------------------


@pytest.mark.broker
def test_waiting_in_flight_and_aging_messages_are_counted(parts: Parts) -> None:
    commands = parts.bus.topology.commands_queue
    sent = _publish_commands(parts, 3)
    time.sleep(WAIT_S)

    rows = _rows(parts)
    first = rows[commands.name]
    assert first["ready"] == 3
    assert first["unacked"] == _in_flight(parts, 0)
    assert _age(first) >= WAIT_S
    assert first["source"] == _source(parts)
    for name, row in rows.items():
        if name != commands.name:
            assert (row["ready"], row["oldest_age_s"]) == (0, None), row
    time.sleep(0.2)
    assert _age(_rows(parts)[commands.name]) >= _age(first) + 0.19

    with _consumer(parts) as take:
        taken = take(commands)
        row = _rows(parts)[commands.name]
        assert (row["ready"], row["unacked"]) == (2, _in_flight(parts, 1))
        assert _age(row) >= WAIT_S  # the other two are as old
        taken.ack()
        assert _rows(parts)[commands.name]["unacked"] == _in_flight(parts, 0)
        rest = [take(commands) for _ in range(2)]
        for message in rest:
            message.ack()

    # Peeking at the head for its age moved nothing: the messages came out in order.
    assert [json.loads(m.body)["id"] for m in [taken, *rest]] == sent
    row = _rows(parts)[commands.name]
    assert (row["ready"], row["unacked"], row["oldest_age_s"]) == (0, _in_flight(parts, 0), None)


@pytest.mark.broker
def test_a_celery_task_for_a_service_is_counted_and_aged(parts: Parts) -> None:
    deploy = envelope(
        DeployComponent(environment="staging", service="api", version="2.0.0"),
        release_id="R-1",
        actor="test",
    )
    parts.bus.publish(deploy)  # a Celery task on the service's queue
    time.sleep(WAIT_S)
    api = parts.bus.topology.service_queue("api")

    rows = _rows(parts)
    assert rows[api.name]["ready"] == 1
    assert _age(rows[api.name]) >= WAIT_S
    others = [parts.bus.topology.service_queue(s).name for s in ("db", "cache", "jobs", "web")]
    assert all(rows[name]["ready"] == 0 for name in others)

    with _consumer(parts) as take:
        task = take(api)
        assert task.headers["id"] == deploy.id  # Celery's own message, not a copy
        row = _rows(parts)[api.name]
        # On Redis the task left through the default exchange, named by its routing key.
        assert (row["ready"], row["unacked"], row["oldest_age_s"]) == (
            0,
            _in_flight(parts, 1),
            None,
        )
        task.ack()
    assert _rows(parts)[api.name]["unacked"] == _in_flight(parts, 0)


@pytest.mark.broker
def test_a_message_without_the_sent_at_header_has_no_age(parts: Parts) -> None:
    topology = parts.bus.topology
    parts.bus.declare()
    with Connection(parts.settings.broker_url) as connection:
        Producer(connection.default_channel).publish(
            {"not": "drover's"},
            exchange=topology.commands_exchange,
            routing_key="commands",
            declare=[topology.commands_exchange],
        )
    row = _rows(parts)[topology.commands_queue.name]
    assert (row["ready"], row["oldest_age_s"]) == (1, None)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"], ids=["redis", "amqp"]
)
def test_an_unreachable_broker_is_reported(url: str, namespace: str, tmp_path: Path) -> None:
    settings = Settings.load(
        environ={}, broker_url=url, namespace=namespace, store_url=f"sqlite:///{tmp_path}/s.db"
    )
    parts = connect(settings, load_fleet(FLEET))
    try:
        with pytest.raises(BrokerUnavailable):
            queue_depths(parts)
    finally:
        parts.close()


# --- Redis -----------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_redis_sees_a_requeued_message_behind_the_newest(parts: Parts) -> None:
    commands = parts.bus.topology.commands_queue
    parts.bus.publish(_command(0))
    time.sleep(WAIT_S)
    parts.bus.publish(_command(1))
    with _consumer(parts) as take:
        take(commands).reject(requeue=True)  # kombu pushes it behind the newest

    client = redis.Redis.from_url(parts.settings.broker_url)
    next_out = json.loads(client.lindex(commands.name, -1) or b"{}")
    client.close()
    assert next_out["headers"]["drover_release_id"] == "R-1"
    row = _rows(parts)[commands.name]
    assert row["ready"] == 2
    assert _age(row) >= WAIT_S  # the requeued one's age, not the next one's


# --- RabbitMQ with a management API ---------------------------------------------------


@dataclass
class _ManagementApi:
    port: int
    authorizations: list[str | None] = field(default_factory=list)


@contextmanager
def _management_api(answers: dict[str, dict[str, Any]]) -> Iterator[_ManagementApi]:
    """A local server answering like RabbitMQ's management API for the paths in ``answers``."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = answers.get(self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"error": "Object Not Found"}).encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _ManagementApi(port=int(server.server_address[1]), authorizations=seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.broker
@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_rabbitmq_reads_in_flight_messages_from_the_management_api(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = parts.bus.topology
    commands, api = topology.commands_queue, topology.service_queue("api")
    parts.bus.publish(_command(0))
    parts.bus.publish(
        envelope(
            DeployComponent(environment="staging", service="api", version="2.0.0"),
            release_id="R-1",
            actor="test",
        )
    )
    time.sleep(WAIT_S)
    answers = {
        f"/api/queues/%2F/{quote(commands.name, safe='')}": {
            "messages_unacknowledged": 7,
            "type": "classic",
        },
        f"/api/queues/%2F/{quote(api.name, safe='')}": {
            "messages_unacknowledged": 2,
            "type": "quorum",
        },
    }
    with _management_api(answers) as api_server:
        monkeypatch.setitem(queues_module._MANAGEMENT_PORTS, "http", api_server.port)
        rows = _rows(parts)
    authorizations = api_server.authorizations

    assert {row["source"] for row in rows.values()} == {"rabbitmq-management"}
    assert authorizations[0] == "Basic Z3Vlc3Q6Z3Vlc3Q="  # guest:guest, from the broker URL
    assert (rows[commands.name]["ready"], rows[commands.name]["unacked"]) == (1, 7)
    assert _age(rows[commands.name]) >= WAIT_S
    # A quorum queue counts a requeue as a delivery: it is not peeked, so no age.
    assert (rows[api.name]["ready"], rows[api.name]["unacked"]) == (1, 2)
    assert rows[api.name]["oldest_age_s"] is None
    assert rows[topology.coordinator_queue.name]["unacked"] == 0  # the API does not know it
