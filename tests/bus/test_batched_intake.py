"""Drover's intake on Redis (:mod:`orchestrator.redis_transport`): while messages wait, a
poll takes as many as the consumer has room for, each recorded as unacknowledged in the
same step; on a Redis of the test's own, with messages published by plain kombu (any
kombu or Celery process shares these queues)."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.messaging import Consumer, Producer

from orchestrator.redis_transport import _TAKE, Transport
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.broker

SERVICES = [f"svc-{n}" for n in range(6)]
EACH = 5  # messages waiting per service queue
EXCHANGE = Exchange("intake-test", type="direct")
# Taken but unacknowledged messages are handed out again after a second.
FAST_REDELIVERY = {"visibility_timeout": 1, "unacked_restore_throttle": 1}


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url) as client:
        yield client


def _queues(services: list[str]) -> list[Queue]:
    return [Queue(name, EXCHANGE, routing_key=name) for name in services]


def _publish(
    url: str,
    services: list[str],
    each: int,
    prefix: str = "",
    priorities: Sequence[int] = (),  # the nth message's, if given
) -> set[str]:
    """``each`` messages to every service's queue, by kombu's own transport."""
    sent = set()
    with Connection(url, transport_options={"global_keyprefix": prefix}) as connection:
        producer = Producer(connection.default_channel, EXCHANGE)
        for queue in _queues(services):
            queue(connection.default_channel).declare()
        for n in range(each):
            priority = priorities[n] if priorities else None
            for service in services:
                body = f"{service}/{n}"
                producer.publish(body, routing_key=service, priority=priority, serializer="json")
                sent.add(body)
    return sent


def _waiting(client: redis.Redis, services: list[str], prefix: str = "") -> int:
    return sum(client.llen(prefix + service) for service in services)


def _on_record(client: redis.Redis, prefix: str = "") -> set[str]:
    """Delivery tags recorded as unacknowledged (both of kombu's records agree)."""
    tags = {tag.decode() for tag in client.hkeys(f"{prefix}unacked")}
    assert {tag.decode() for tag in client.zrange(f"{prefix}unacked_index", 0, -1)} == tags
    return tags


class _Taker:
    """A consumer on Drover's transport that keeps what it is given, unacknowledged."""

    def __init__(
        self,
        url: str,
        services: list[str],
        prefetch: int,
        no_ack: bool = False,
        prefix: str = "",
        transport: type[Transport] | None = Transport,  # None: kombu's own
    ):
        options = FAST_REDELIVERY | {"global_keyprefix": prefix}
        self.connection = Connection(url, transport=transport, transport_options=options)
        self.held: list[Message] = []
        self.consumer = Consumer(
            self.connection.default_channel,
            _queues(services),
            callbacks=[lambda _body, message: self.held.append(message)],
            no_ack=no_ack,
            accept=["json"],
        )
        self.consumer.qos(prefetch_count=prefetch)
        self.consumer.consume()

    def take(self, count: int) -> list[Message]:
        """Poll until ``count`` more are held, for at most ten seconds."""
        wanted = len(self.held) + count
        deadline = time.monotonic() + 10
        while len(self.held) < wanted:
            try:
                # Short polls: kombu hands out overdue unacknowledged messages again
                # when a poll times out.
                self.connection.drain_events(timeout=0.2)
            except TimeoutError:
                assert time.monotonic() < deadline, f"{len(self.held)} of {wanted} came"
        return self.held[wanted - count :]

    def receive(self, count: int, client: redis.Redis, prefix: str = "") -> list[str]:
        """``count`` more (a poll may bring several), each on record until acknowledged."""
        received = []
        while len(received) < count:
            for message in self.take(1):
                assert message.delivery_tag in _on_record(client, prefix)
                received.append(message.decode())
                message.ack()
        return received

    def close(self) -> None:
        self.consumer.cancel()
        self.connection.close()


def _bodies(messages: list[Message]) -> list[Any]:
    return [message.decode() for message in messages]


@pytest.mark.parametrize("prefix", ["", "drover:"], ids=["keys as kombu's", "keys prefixed"])
def test_waiting_messages_arrive_once_each_on_record_until_acknowledged(
    server: RedisServer, client: redis.Redis, prefix: str
) -> None:
    sent = _publish(server.url, SERVICES, EACH, prefix)
    client.config_resetstat()
    taker = _Taker(server.url, SERVICES, prefetch=4, prefix=prefix)
    try:
        first = taker.take(4)
        # As many as there was room for, each on record, the rest still in their lists.
        assert {m.delivery_tag for m in first} == _on_record(client, prefix)
        assert _waiting(client, SERVICES, prefix) == len(sent) - 4
        with pytest.raises(TimeoutError):
            taker.connection.drain_events(timeout=0.3)  # no room: nothing more is taken
        for message in first:
            message.ack()
        assert _on_record(client, prefix) == set()

        received = _bodies(first) + taker.receive(len(sent) - len(first), client, prefix)
    finally:
        taker.close()
    assert sorted(received) == sorted(sent)
    assert _on_record(client, prefix) == set()
    # Taken several at a time: fewer polls than messages.
    stats = client.info("commandstats")
    polls = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "brpop"))
    assert polls < len(sent) / 2


def test_a_consumer_killed_holding_messages_loses_none(
    server: RedisServer, client: redis.Redis
) -> None:
    sent = _publish(server.url, SERVICES, EACH)
    holder = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tests.bus.test_batched_intake import _Taker
        taker = _Taker({server.url!r}, {SERVICES!r}, prefetch=8)
        taker.take(8)
        print("holding", flush=True)
        time.sleep(60)  # holding them until the test kills it, well before this ends
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "holding"
        finally:
            process.kill()

    # Killed without a word: what it held is on record, the rest still in the lists.
    assert len(_on_record(client)) == 8
    assert _waiting(client, SERVICES) == len(sent) - 8

    # And it all comes, the eight held by the dead consumer again after the visibility timeout.
    taker = _Taker(server.url, SERVICES, prefetch=4)
    try:
        received = taker.receive(len(sent), client)
    finally:
        taker.close()
    assert sorted(received) == sorted(sent)
    assert _on_record(client) == set()


def test_a_consumer_closing_holding_messages_puts_them_back_at_once(
    server: RedisServer, client: redis.Redis
) -> None:
    # As a Celery worker's warm shutdown does with what it took and did not start: kombu
    # puts back what the records say, so they must be kombu's records.
    sent = _publish(server.url, SERVICES, EACH)
    taker = _Taker(server.url, SERVICES, prefetch=8)
    taker.take(8)
    taker.close()

    assert _on_record(client) == set()
    assert _waiting(client, SERVICES) == len(sent)


def test_queues_consumed_without_acknowledgement_leave_no_record(
    server: RedisServer, client: redis.Redis
) -> None:
    sent = _publish(server.url, SERVICES[:2], EACH)
    taker = _Taker(server.url, SERVICES[:2], prefetch=4, no_ack=True)
    try:
        received = _bodies(taker.take(len(sent)))
    finally:
        taker.close()
    assert sorted(received) == sorted(sent)
    assert _on_record(client) == set()


def test_busy_queues_take_turns(server: RedisServer) -> None:
    _publish(server.url, ["busy-a", "busy-b"], 6)
    taker = _Taker(server.url, ["busy-a", "busy-b"], prefetch=1)
    try:
        order = []
        for _ in range(12):
            (message,) = taker.take(1)
            order.append(message.delivery_info["routing_key"])
            message.ack()
    finally:
        taker.close()
    assert all(now != then for now, then in itertools.pairwise(order)), order


@pytest.mark.parametrize("prefix", ["", "drover:"], ids=["keys as kombu's", "keys prefixed"])
def test_messages_of_every_priority_arrive_in_the_order_kombus_transport_gives(
    server: RedisServer, prefix: str
) -> None:
    # One at a time (no room for more), every message comes by BRPOP, which names each
    # queue's list at every one of kombu's priority steps.
    services = SERVICES[:3]
    orders = []
    for transport in (None, Transport):
        _publish(server.url, services, 5, prefix, priorities=(6, 0, 9, 3, 0))
        taker = _Taker(server.url, services, prefetch=1, prefix=prefix, transport=transport)
        try:
            orders.append(_one_by_one(taker, 15))
        finally:
            taker.close()
    kombus, drovers = orders
    assert drovers == kombus
    assert kombus[:3] == [f"{service}/1" for service in services]  # priorities were kept


def _one_by_one(taker: _Taker, count: int) -> list[Any]:
    taken = []
    for _ in range(count):
        (message,) = taker.take(1)
        taken.append(message.decode())
        message.ack()
    return taken


def test_a_redis_that_refuses_the_take_gets_kombus_way(
    server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # A user who may not run scripts: every take is refused, as by a Redis older than 7.0.
    client.acl_setuser(
        "no-scripts",
        enabled=True,
        passwords=["+only-for-this-test"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-eval"],
    )
    sent = _publish(server.url, SERVICES[:2], 3)
    url = server.url.replace("redis://", "redis://no-scripts:only-for-this-test@")
    taker = _Taker(url, SERVICES[:2], prefetch=4)
    try:
        received = taker.receive(len(sent), client)  # each recorded as kombu does
    finally:
        taker.close()
    assert sorted(received) == sorted(sent)
    refusals = [r for r in caplog.records if "refused the batched take" in r.getMessage()]
    assert [r.levelname for r in refusals if r.levelname == "WARNING"] == ["WARNING"]


def test_a_message_handed_over_before_its_take_was_refused_is_recorded_as_kombu_does(
    server: RedisServer, client: redis.Redis
) -> None:
    # Once Redis has run a take, the record of what BRPOP brings is not waited for: should
    # that take be refused (a Redis out of memory; here, scripts taken from the user), the
    # message already handed over is recorded kombu's way when the answer is read.
    user = "scripts-until-revoked"
    client.acl_setuser(
        user,
        enabled=True,
        passwords=["+only-for-this-test"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    url = server.url.replace("redis://", f"redis://{user}:only-for-this-test@")
    taker = _Taker(url, SERVICES[:1], prefetch=4)
    try:
        _publish(server.url, SERVICES[:1], 1)
        (first,) = taker.take(1)  # its record waited for: Redis runs takes
        first.ack()
        client.acl_setuser(user, enabled=True, commands=["-eval"])
        _publish(server.url, SERVICES[:1], 1)
        (second,) = taker.take(1)
        with pytest.raises(TimeoutError):
            taker.connection.drain_events(timeout=0.2)  # reads the refusal
        assert _on_record(client) == {second.delivery_tag}
    finally:
        taker.close()


def _take(client: redis.Redis, lists: list[str], most: int) -> tuple[int, list[Any]]:
    """The take's script run by hand: how many lists it looked at, and what it took."""
    keys = ["unacked_index", "unacked", *lists]
    looked, *taken = client.eval(_TAKE.script, len(keys), *keys, 0, most, "a" * len(lists))  # type: ignore[misc]
    return looked, taken


def test_messages_behind_many_idle_queues_all_arrive(
    server: RedisServer, client: redis.Redis
) -> None:
    # A take looks only at the first few lists in order (finding idle ones, it sends them
    # to the back): what waits further down comes by BRPOP, as in kombu.
    idle = [f"idle-{n:03d}" for n in range(100)]
    _publish(server.url, idle, 0)
    sent = _publish(server.url, ["busy-1", "busy-2", "busy-3"], 10)
    taker = _Taker(server.url, [*idle, "busy-1", "busy-2", "busy-3"], prefetch=4)
    try:
        received = taker.receive(len(sent), client)
    finally:
        taker.close()
    assert sorted(received) == sorted(sent)
    assert _on_record(client) == set()


def test_a_message_the_take_cannot_read_stays_where_it_was(
    server: RedisServer, client: redis.Redis
) -> None:
    _publish(server.url, ["later"], 1)
    client.lpush("unreadable", b"not kombu's json")

    # Left at the head of its list, for kombu's BRPOP, and its list not counted as looked
    # at (it stays in front); nothing taken after it either.
    assert _take(client, ["unreadable", "later"], most=4) == (0, [])
    assert client.lrange("unreadable", 0, -1) == [b"not kombu's json"]
    assert client.llen("later") == 1
    assert _on_record(client) == set()


def test_a_full_redis_refuses_the_take_before_it_takes_anything(
    server: RedisServer, client: redis.Redis
) -> None:
    _publish(server.url, ["full"], 3)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # far less than the server holds: it is full

    with pytest.raises(redis.exceptions.OutOfMemoryError):
        _take(client, ["full"], most=4)
    assert client.llen("full") == 3
    assert _on_record(client) == set()

    client.config_set("maxmemory", 0)
    assert len(_take(client, ["full"], most=4)[1]) == 2 * 3
    assert len(_on_record(client)) == 3


def test_queues_consumed_can_change_between_polls(
    server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    first, cancelled, added = SERVICES[:3]
    taker = _Taker(server.url, [first, cancelled], prefetch=4)
    try:
        _publish(server.url, [first], 1)
        assert taker.receive(1, client) == [f"{first}/0"]  # polled: the queues are known

        taker.consumer.cancel_by_queue(cancelled)
        _publish(server.url, [first, cancelled], 1)
        assert taker.receive(1, client) == [f"{first}/0"]

        taker.consumer.add_queue(_queues([added])[0])
        taker.consumer.consume()
        _publish(server.url, [added], 1)
        assert taker.receive(1, client) == [f"{added}/0"]
        assert client.llen(cancelled) == 1  # for whoever consumes it, not taken
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        taker.close()
