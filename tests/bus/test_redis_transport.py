"""Drover's kombu Redis transport (one client per channel) on a Redis of the test's own that
is killed and started again: what was published on either side of the restart arrives,
whether Drover's connection sent it (events) or Celery's (commands); and a consumer on
kombu's event loop, as Celery's worker consumes, goes on after its connection is cut."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu.asynchronous import Hub
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from orchestrator.contract import ComponentDeployed, DeployComponent, Envelope, envelope
from orchestrator.redis_transport import Channel, Transport
from orchestrator.runtime import Parts
from tests.conftest import require
from tests.support.listening import connected_parts, drain, listen, messages
from tests.support.redis_server import RedisServer

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    require("Redis", "127.0.0.1", 6379)  # the machine's Redis says redis-server is here
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def parts(broker: RedisServer, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(broker.url, namespace, tmp_path, FLEET) as connected:
        yield connected


def _deployed(n: int) -> Envelope:
    event = ComponentDeployed(
        environment="staging", service="api", version=f"2.0.{n}", previous_versions={}
    )
    return envelope(event, release_id="r1", actor="test")


def _deploy(n: int) -> Envelope:
    command = DeployComponent(environment="staging", service="api", version=f"2.0.{n}")
    return envelope(command, release_id="r1", actor="test")


def test_events_published_before_and_after_a_restart_all_arrive(
    broker: RedisServer, parts: Parts
) -> None:
    listener = listen(broker.url, parts.bus.topology.events_exchange, "#")
    before = _deployed(1)
    parts.bus.publish(before)

    broker.kill()
    broker.start()
    after = _deployed(2)
    parts.bus.publish(after)  # on a connection the restart broke: kombu's retry mends it

    assert [m.id for m in messages(drain(broker.url, listener))] == [before.id, after.id]


def test_commands_sent_before_and_after_a_restart_all_wait_in_their_queue(
    broker: RedisServer, parts: Parts
) -> None:
    parts.bus.declare_service_queues(["api"])
    sent = [_deploy(1)]
    parts.bus.publish(sent[0])

    broker.kill()
    broker.start()
    sent.append(_deploy(2))
    parts.bus.publish(sent[1])

    with Connection(broker.url) as connection:
        waiting = connection.SimpleQueue(parts.bus.topology.service_queue("api"))
        task_ids = [waiting.get(timeout=5).headers["id"] for _ in sent]
        waiting.close()
    assert task_ids == [m.id for m in sent]


def test_drover_and_celery_connections_use_the_transport(parts: Parts) -> None:
    # What the two tests above prove is proven of this transport, not of kombu's own.
    with parts.celery.connection_for_write() as celery:
        assert isinstance(celery.default_channel, Channel)
    assert isinstance(parts.bus._connection.default_channel, Channel)


def test_a_consumer_on_an_event_loop_takes_messages_again_after_its_connection_is_cut(
    broker: RedisServer, namespace: str
) -> None:
    """As Celery's worker consumes: on kombu's event loop. The transport adds a socket to
    the loop only where the loop lacks it; one made anew after a cut must be added."""
    queue = Queue(namespace, Exchange(namespace, "direct"), namespace)
    received: list[str] = []
    hub = Hub()
    with Connection(broker.url, transport=Transport) as connection, contextlib.closing(hub):
        connection.connect()
        connection.transport.register_with_event_loop(connection.connection, hub)
        producer = connection.Producer(serializer="json")
        consumer = connection.Consumer([queue], accept=["json"])
        consumer.register_callback(lambda body, message: (received.append(body), message.ack()))
        with consumer:
            producer.publish("before", exchange=queue.exchange, routing_key=namespace)
            _turn_until(hub, connection, lambda: received == ["before"])
            _turn_until(hub, connection, lambda: len(_waiting_clients(broker)) == 1)

            with redis.Redis.from_url(broker.url) as client:
                for waiting in _waiting_clients(broker):
                    client.client_kill_filter(_id=waiting["id"])
            producer.publish("after", exchange=queue.exchange, routing_key=namespace)
            _turn_until(hub, connection, lambda: len(received) == 2)

    assert received == ["before", "after"]


def _turn_until(hub: Hub, connection: Connection, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the event loop took nothing more in 10 s"
        # The cut, met by the poll, is raised; the loop goes on, on the same transport.
        with contextlib.suppress(*connection.connection_errors):
            hub.run_once()


def _waiting_clients(broker: RedisServer) -> list[dict[str, str]]:
    """The clients blocked in a ``BRPOP``: the consumer's poll, in flight."""
    with redis.Redis.from_url(broker.url) as client:
        return [c for c in client.client_list() if c["cmd"] == "brpop"]
