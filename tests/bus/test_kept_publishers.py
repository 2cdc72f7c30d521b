"""The bus's publishers, kept bound to connections of their own: threads publishing at once
each get one, every message arrives once, and the connections made for the first
publishes serve the rest; a publisher whose connection the broker dropped
publishes again on a new one. On a Redis of the test's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.contract import Envelope, StepStarted, envelope
from orchestrator.runtime import Parts
from orchestrator.vocabulary import Step
from tests.support.listening import connected_parts, drain, listen, messages
from tests.support.redis_server import RedisServer

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"
THREADS = 6

pytestmark = pytest.mark.broker


@pytest.fixture
def parts(server: RedisServer, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(server.url, "kept", tmp_path, FLEET) as connected:
        yield connected


def _event(n: int) -> Envelope:
    started = StepStarted(
        environment="staging", service="api", step=Step.DEPLOY, batch=n + 1, hosts=("h",)
    )
    return envelope(started, release_id="r1", actor="drover-worker")


def _connections_made(server: RedisServer) -> int:
    """How many connections the server has accepted so far, not counting this look's."""
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("stats")["total_connections_received"]) - 1
    finally:
        client.close()


def test_threads_publishing_at_once_each_use_a_publisher_of_their_own(
    server: RedisServer, parts: Parts
) -> None:
    queue = listen(server.url, parts.bus.topology.events_exchange, "StepStarted.#")
    before = _connections_made(server)
    sent = [[_event(t * 1000 + n) for n in range(100)] for t in range(THREADS)]

    _publish_at_once(parts, [batch[:50] for batch in sent])
    _publish_at_once(parts, [batch[50:] for batch in sent])

    # 600 publishes, and the connections of at most one publisher a thread: kept, not
    # made a publish. (A Redis channel opens a few: to push, to read an exchange's
    # bindings, to declare one; the look before this one is not counted.)
    assert _connections_made(server) - before - 1 <= 4 * THREADS
    heard = [message.id for message in messages(drain(server.url, queue))]
    assert sorted(heard) == sorted(message.id for batch in sent for message in batch)


def _publish_at_once(parts: Parts, batches: list[list[Envelope]]) -> None:
    start = threading.Barrier(len(batches))

    def publish_all(batch: list[Envelope]) -> None:
        start.wait()
        for message in batch:
            parts.bus.publish(message)

    threads = [threading.Thread(target=publish_all, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_publisher_whose_connection_was_dropped_publishes_on_a_new_one(
    server: RedisServer, parts: Parts
) -> None:
    queue = listen(server.url, parts.bus.topology.events_exchange, "StepStarted.#")
    parts.bus.publish(_event(1))  # a publisher made, and kept
    client = redis.Redis.from_url(server.url)
    client.client_kill_filter(skipme=True)  # every other connection: the kept one's too
    client.close()

    parts.bus.publish(_event(2))

    assert [m.payload.batch for m in messages(drain(server.url, queue))] == [2, 3]
