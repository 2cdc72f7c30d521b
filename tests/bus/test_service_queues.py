"""The fleet's service queues, declared by the coordinator as it starts, on real brokers.

A command sent to a service whose workers have never started must wait in the service's
queue; a direct exchange with nothing bound to it would drop it. A command there says in
Celery's task headers what it is, for Celery's monitors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu.connection import Connection
from kombu.messaging import Producer

from orchestrator.contract import DeployComponent, decode, envelope
from orchestrator.runtime import Parts
from tests.support.listening import connected_parts

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture(params=["redis", "rabbitmq"])
def parts(request: pytest.FixtureRequest, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url")
    with connected_parts(url, namespace, tmp_path, FLEET) as connected:
        yield connected
        _delete_service_queues(connected, url)


def _delete_service_queues(parts: Parts, url: str) -> None:
    queues = [parts.bus.topology.service_queue(s) for s in parts.fleet.service_names()]
    if url.startswith("redis"):  # kombu's binding tables
        client = redis.Redis.from_url(url)
        for queue in queues:
            client.delete(f"_kombu.binding.{queue.name}", f"_kombu.binding_permanent.{queue.name}")
            client.delete(queue.name)
        client.close()
        return
    with Connection(url) as connection:
        for queue in queues:
            queue(connection.default_channel).delete()
            queue.exchange(connection.default_channel).delete()


def test_every_service_queue_holds_a_command_sent_before_any_worker_started(
    parts: Parts,
) -> None:
    services = parts.fleet.service_names()

    parts.bus.declare_service_queues(services)

    url = parts.settings.broker_url
    with Connection(url) as connection:
        for service in services:
            queue = parts.bus.topology.service_queue(service)
            # Another process, which declares nothing: the exchange must route already.
            producer = Producer(connection.default_channel, auto_declare=False)
            producer.publish(
                {"for": service},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                serializer="json",
                declare=[],
            )
        for service in services:
            waiting = connection.SimpleQueue(parts.bus.topology.service_queue(service))
            message = waiting.get(timeout=5)
            assert message.payload == {"for": service}
            message.ack()
            waiting.close()


def test_a_command_tells_celerys_monitors_what_it_is(parts: Parts) -> None:
    command = envelope(
        DeployComponent(environment="staging", service="web", version="2.0.0"),
        release_id="r1",
        actor="test",
    )

    parts.bus.publish(command)

    with Connection(parts.settings.broker_url) as connection:
        waiting = connection.SimpleQueue(parts.bus.topology.service_queue("web"))
        message = waiting.get(timeout=5)
        message.ack()
        waiting.close()
    assert message.headers["argsrepr"] == f"(DeployComponent {command.id} of release r1,)"
    assert message.headers["kwargsrepr"] == "{}"
    args, kwargs, _ = message.payload
    assert decode(args[0]) == command and kwargs == {}  # the command itself, whole
