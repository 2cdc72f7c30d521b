"""The fleet's service queues, declared by the coordinator as it starts, on real brokers.

A command sent to a service whose workers have never started must wait in the service's
queue; a direct exchange with nothing bound to it would drop it. A command there says in
Celery's task headers what it is, for Celery's monitors, and is in every other way the
message Celery's own ``send_task`` makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Producer

from orchestrator.bus import DEPLOY_TASK
from orchestrator.contract import DeployComponent, Envelope, decode, envelope
from orchestrator.runtime import Parts
from tests.support.listening import connected_parts, forget_on_rabbitmq

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture(params=["redis", "rabbitmq"])
def parts(request: pytest.FixtureRequest, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url")
    with connected_parts(url, namespace, tmp_path, FLEET) as connected:
        yield connected
        _delete_service_queues(connected, url)


def _delete_service_queues(parts: Parts, url: str) -> None:
    if url.startswith("amqp"):
        forget_on_rabbitmq(url, parts.bus.topology.namespace, FLEET)
        return
    client = redis.Redis.from_url(url)  # the lists, and kombu's binding tables
    for service in parts.fleet.service_names():
        queue = parts.bus.topology.service_queue(service)
        client.delete(f"_kombu.binding.{queue.name}", f"_kombu.binding_permanent.{queue.name}")
        client.delete(queue.name)
    client.close()


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
    command = _command()

    parts.bus.publish(command)

    message = _taken(parts, "web")
    assert message.headers["argsrepr"] == f"(DeployComponent {command.id} of release r1,)"
    assert message.headers["kwargsrepr"] == "{}"
    args, kwargs, _ = message.payload
    assert decode(args[0]) == command and kwargs == {}  # the command itself, whole


def test_a_command_is_the_message_celerys_send_task_makes(parts: Parts) -> None:
    """Workers of any Celery version read what ``send_task`` writes: the bus, which makes
    the message itself, must write nothing else."""
    command = _command()
    parts.bus.publish(command)
    sent = _taken(parts, "web")

    parts.celery.send_task(
        DEPLOY_TASK,
        args=[command.to_wire()],
        task_id=command.id,
        queue=parts.bus.topology.service_queue("web"),
        headers={k: v for k, v in sent.headers.items() if k.startswith("drover_")},
        argsrepr=sent.headers["argsrepr"],
        kwargsrepr=sent.headers["kwargsrepr"],
    )
    by_celery = _taken(parts, "web")

    assert _as_sent(sent) == _as_sent(by_celery)


def _command() -> Envelope:
    return envelope(
        DeployComponent(environment="staging", service="web", version="2.0.0"),
        release_id="r1",
        actor="test",
    )


def _taken(parts: Parts, service: str) -> Message:
    with Connection(parts.settings.broker_url) as connection:
        waiting = connection.SimpleQueue(parts.bus.topology.service_queue(service))
        message = waiting.get(timeout=5)
        message.ack()
        waiting.close()
    return message


def _as_sent(message: Message) -> dict[str, Any]:
    """All the publisher chose of a message; not the tag the broker gave its delivery."""
    properties = {k: v for k, v in message.properties.items() if k != "delivery_tag"}
    routed = {k: message.delivery_info.get(k) for k in ("exchange", "routing_key")}
    return {
        "body": message.body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "properties": properties,
        "routed": routed,
    }
