"""Publishing on Drover's Redis transport (:mod:`orchestrator.redis_transport`): a message
routed by the bindings the channel last read and pushed in one call lands exactly where
kombu's own transport puts it, and bindings changed since they were read are never
routed by. On a Redis of the test's own, kombu's transport in one database and Drover's
in another."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from orchestrator.redis_transport import Transport
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.broker

EVENTS = Exchange("routing-events", type="topic")
COMMANDS = Exchange("routing-commands", type="direct")
QUEUES = [
    Queue("everything", EVENTS, routing_key="#"),
    Queue("deployed", EVENTS, routing_key="ComponentDeployed.*"),
    Queue("failed-r1", EVENTS, routing_key="ComponentFailed.r1"),
    Queue("release-r2", EVENTS, routing_key="*.r2"),
    Queue("nested", EVENTS, routing_key="Progress.#.done"),
    Queue("api", COMMANDS, routing_key="api"),
    Queue("api-audit", COMMANDS, routing_key="api"),
    Queue("web", COMMANDS, routing_key="web"),
]
# (exchange, routing key, priority): every kind of match and miss, and a priority.
PUBLISHED = [
    (EVENTS, "ComponentDeployed.r1", None),
    (EVENTS, "ComponentFailed.r1", None),
    (EVENTS, "ComponentFailed.r2", 7),
    (EVENTS, "ComponentDeployed.r2.extra", None),
    (EVENTS, "Progress.r3.step.done", None),
    (EVENTS, "Progress.done", None),
    (EVENTS, "", None),
    (COMMANDS, "api", None),
    (COMMANDS, "web", 3),
    (COMMANDS, "db", None),  # bound to no queue
]


def _connection(server: RedisServer, db: int, prefix: str, drovers: bool) -> Connection:
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    transport = Transport if drovers else None
    return Connection(url, transport=transport, transport_options={"global_keyprefix": prefix})


def _declared(connection: Connection, queues: list[Queue]) -> Any:
    channel = connection.default_channel
    for queue in queues:
        queue(channel).declare()
    return channel


def _lists(client: redis.Redis) -> dict[bytes, list[tuple[Any, ...]]]:
    """Every list in the database: what each message says, in the order it waits."""
    lists = {}
    for key in client.scan_iter():
        if client.type(key) == b"list":
            messages = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
            lists[key] = [
                (
                    m["body"],
                    m["properties"]["delivery_info"]["exchange"],
                    m["properties"]["delivery_info"]["routing_key"],
                    m["properties"].get("priority"),
                )
                for m in messages
            ]
    return lists


@pytest.mark.parametrize("prefix", ["", "drover-test:"])
def test_messages_land_where_kombus_transport_puts_them(server: RedisServer, prefix: str) -> None:
    landed = []
    for db, drovers in ((0, False), (1, True)):
        with _connection(server, db, prefix, drovers) as connection:
            producer = Producer(_declared(connection, QUEUES))
            for n, (exchange, routing_key, priority) in enumerate(PUBLISHED):
                producer.publish(
                    {"n": n},
                    exchange=exchange,
                    routing_key=routing_key,
                    priority=priority,
                    serializer="json",
                    declare=[exchange],
                )
        with redis.Redis(port=server.port, db=db) as client:
            landed.append(_lists(client))
    kombus, drovers = landed
    assert drovers == kombus
    assert prefix.encode() + b"everything" in drovers  # the comparison compared something


def _bodies(client: redis.Redis, queue: str) -> list[str]:
    """The messages waiting in ``queue``, first published first."""
    waiting = reversed(client.lrange(queue, 0, -1))
    return [base64.b64decode(json.loads(raw)["body"]).decode() for raw in waiting]


def test_bindings_changed_since_they_were_read_are_not_routed_by(server: RedisServer) -> None:
    first, second = (Queue(name, EVENTS, routing_key="#") for name in ("first", "second"))
    with (
        _connection(server, 0, "", drovers=True) as publishing,
        _connection(server, 0, "", drovers=False) as other,
        redis.Redis(port=server.port) as client,
    ):
        producer = Producer(_declared(publishing, [first]), serializer="raw")
        producer.publish("1", exchange=EVENTS, routing_key="x", declare=[EVENTS])

        # Another process binds a queue: the publishing channel's bindings are out of date.
        second(other.default_channel).declare()
        producer.publish("2", exchange=EVENTS, routing_key="x")
        assert _bodies(client, "first") == ["1", "2"]
        assert _bodies(client, "second") == ["2"]

        # Deleted by the other process (kombu's Redis transport removes a binding with its
        # queue, not before, and only one its channel declared).
        _declared(other, [first])
        first(other.default_channel).delete()
        producer.publish("3", exchange=EVENTS, routing_key="x")
        assert _bodies(client, "first") == []
        assert _bodies(client, "second") == ["2", "3"]

        second(other.default_channel).delete()
        producer.publish("4", exchange=EVENTS, routing_key="x")  # routed nowhere, as in kombu
        assert _bodies(client, "first") == _bodies(client, "second") == []
