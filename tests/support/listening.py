"""A listener of one's own on Drover's exchanges, as a dashboard would bind one, and the
parts of a process connected to a real broker: for tests that read what goes over the bus."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from orchestrator.bus import Topology
from orchestrator.contract import Envelope, decode_body
from orchestrator.plans import load_fleet
from orchestrator.runtime import Parts, connect
from orchestrator.settings import Settings

Heard = list[tuple[dict[str, object], list[Envelope]]]  # (headers, messages) per delivery


@contextmanager
def connected_parts(
    broker_url: str, namespace: str, tmp_path: Path, fleet: Path, **overrides: Any
) -> Iterator[Parts]:
    """Drover's parts on ``broker_url``, with a SQLite store in ``tmp_path`` unless
    ``overrides`` name another (and any other settings they give)."""
    settings = Settings.load(
        environ={},
        broker_url=broker_url,
        namespace=namespace,
        **{"store_url": f"sqlite:///{tmp_path}/store.db", **overrides},
    )
    parts = connect(settings, load_fleet(fleet))
    try:
        yield parts
    finally:
        parts.close()


def listen(broker_url: str, exchange: Exchange, routing_key: str) -> Queue:
    """A queue of one's own bound to ``exchange``: it holds what is published from now on."""
    queue = Queue(
        f"test-listener-{uuid.uuid4().hex[:8]}", exchange=exchange, routing_key=routing_key
    )
    with Connection(broker_url) as connection:
        queue(connection.default_channel).declare()
    return queue


def drain(broker_url: str, queue: Queue) -> Heard:
    """Every delivery in ``queue`` until it stays empty for a second; then the queue goes."""
    heard: Heard = []
    with Connection(broker_url) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    return heard
                heard.append((message.headers, decode_body(message.body)))
                message.ack()
        finally:
            simple.close()
            queue(connection.default_channel).delete()


def messages(heard: Heard) -> list[Envelope]:
    """What was heard, batches unpacked, in the order heard."""
    return [message for _, batch in heard for message in batch]


def waiting_in(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """What waits in ``queue`` on the broker's Redis, oldest first, as kombu keeps it."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    return [json.loads(entry) for entry in reversed(raw)]


def as_published(kept: dict[str, Any]) -> dict[str, Any]:
    """What a publisher chose of a message kept in a queue (:func:`waiting_in`): not its
    delivery tag, nor when it was sent."""
    properties = {k: v for k, v in kept["properties"].items() if k != "delivery_tag"}
    headers = {k: v for k, v in kept["headers"].items() if k != "drover_sent_at"}
    return {**kept, "properties": properties, "headers": headers}


def forget_on_rabbitmq(url: str, namespace: str, fleet: Path) -> None:
    """Delete every queue and exchange Drover declares for ``namespace`` and the services
    of ``fleet`` (durable: they would outlive the test on the machine's RabbitMQ)."""
    topology = Topology(namespace)
    drover_queues = [
        topology.commands_queue,
        topology.coordinator_queue,
        *(topology.service_queue(s) for s in load_fleet(fleet).service_names()),
    ]
    entities: list[Queue | Exchange] = [
        *drover_queues,
        *(q.exchange for q in drover_queues),
        topology.events_exchange,
        topology.progress_exchange,
    ]
    with Connection(url) as connection:
        for entity in entities:
            channel = connection.channel()
            try:
                entity.bind(channel).delete()
                channel.close()
            except connection.channel_errors:
                continue  # never declared (the channel is closed by the broker)
