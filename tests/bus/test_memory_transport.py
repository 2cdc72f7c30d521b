"""Drover's in-memory broker (``memory://``, ``drover run``): a consumer takes every
message once, from its queues in turn, and one waiting for a message takes it as soon as
it is put or as soon as an acknowledgement leaves it room, not at its next poll (the
polling interval here is longer than any test would wait)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message

from orchestrator.bus import transport_for

URL = "memory://localhost/"
POLL_S = 60.0  # kombu's transport would sleep this long between looks
WAIT_S = 30.0  # a test gets its message well before this, or fails


@pytest.fixture
def connection() -> Iterator[Connection]:
    options = {"polling_interval": POLL_S}
    with Connection(URL, transport=transport_for(URL), transport_options=options) as connected:
        yield connected


def _queues(count: int) -> list[Queue]:
    prefix = uuid.uuid4().hex[:8]  # the in-memory broker is the process's: keep apart
    exchange = Exchange(f"{prefix}-x", type="direct")
    return [Queue(f"{prefix}-q{n}", exchange, routing_key=f"{prefix}-q{n}") for n in range(count)]


def _publish(connection: Connection, queue: Queue, body: str) -> None:
    with connection.Producer() as producer:
        producer.publish(
            body,
            serializer="json",
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
        )


class _Taken:
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.messages: list[Message] = []

    def __call__(self, body: str, message: Message) -> None:
        self.bodies.append(body)
        self.messages.append(message)


def test_a_consumer_takes_every_message_once_from_its_queues_in_turn(
    connection: Connection,
) -> None:
    queues = _queues(3)
    for queue in queues:
        queue(connection.default_channel).declare()
    for queue in queues:
        for n in range(2):
            _publish(connection, queue, f"{queue.name[-2:]}-{n}")
    taken = _Taken()
    with connection.Consumer(queues, callbacks=[taken], accept=["json"]):
        for _ in range(6):
            connection.drain_events(timeout=WAIT_S)
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.1)
    assert taken.bodies == ["q0-0", "q1-0", "q2-0", "q0-1", "q1-1", "q2-1"]


def test_a_waiting_consumer_takes_a_message_as_soon_as_it_is_put(connection: Connection) -> None:
    (queue,) = _queues(1)
    queue(connection.default_channel).declare()
    taken = _Taken()
    later = threading.Timer(0.2, _publish, (connection.clone(), queue, "hello"))
    with connection.Consumer([queue], callbacks=[taken], accept=["json"]):
        started = time.monotonic()
        later.start()
        connection.drain_events(timeout=WAIT_S)
        waited_s = time.monotonic() - started
    later.join()
    assert taken.bodies == ["hello"]
    assert waited_s < WAIT_S  # not at a poll, which would have come after POLL_S


def test_an_acknowledgement_lets_a_full_consumer_take_the_next_at_once(
    connection: Connection,
) -> None:
    (queue,) = _queues(1)
    queue(connection.default_channel).declare()
    _publish(connection, queue, "first")
    _publish(connection, queue, "second")
    taken = _Taken()
    with connection.Consumer([queue], callbacks=[taken], accept=["json"]) as consumer:
        consumer.qos(prefetch_count=1)
        connection.drain_events(timeout=WAIT_S)
        assert taken.bodies == ["first"]
        ack = threading.Timer(0.2, taken.messages[0].ack)
        started = time.monotonic()
        ack.start()
        connection.drain_events(timeout=WAIT_S)  # no room until the ack
        waited_s = time.monotonic() - started
        ack.join()
    assert taken.bodies == ["first", "second"]
    assert 0.2 <= waited_s < WAIT_S


def test_a_consumer_with_nothing_to_take_gives_up_at_its_timeout(connection: Connection) -> None:
    (queue,) = _queues(1)
    queue(connection.default_channel).declare()
    with connection.Consumer([queue], callbacks=[_Taken()], accept=["json"]):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.3)
        assert time.monotonic() - started >= 0.3
