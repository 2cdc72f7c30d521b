"""The coordinator's outbox relay, on a real Redis broker and a real store: every message a
commit put in the outbox reaches the bus, oldest first, including those the relay was
never told of (an earlier run's, a commit whose answer was lost, another coordinator's),
and what a publish to a broker that went away left behind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from orchestrator import bus
from orchestrator.bus import BrokerUnavailable, Topology
from orchestrator.contract import Envelope, StepStarted, envelope
from orchestrator.drills import CrashPoints
from orchestrator.outbox import OutboxRelay
from orchestrator.runtime import Parts
from orchestrator.store import CommitResult, StoreUnavailable
from orchestrator.vocabulary import Step
from tests.support.listening import connected_parts, drain, listen, messages
from tests.support.outbox import commit_outbox, commit_through
from tests.support.redis_server import RedisServer

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture
def parts(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(redis_url, namespace, tmp_path, FLEET) as connected:
        yield connected
    client = redis.Redis.from_url(redis_url)  # kombu's binding table of the exchange
    client.delete(f"_kombu.binding.{Topology(namespace).events_exchange.name}")
    client.close()


def _events(count: int) -> list[Envelope]:
    return [
        envelope(
            StepStarted(
                environment="staging", service="api", step=Step.DEPLOY, batch=n + 1, hosts=("h",)
            ),
            release_id="r1",
            actor="drover-coordinator",
        )
        for n in range(count)
    ]


def _relay(parts: Parts) -> OutboxRelay:
    return OutboxRelay(parts.store, parts.bus, CrashPoints())


def test_what_commits_put_in_the_outbox_is_published_in_order(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    first, second, third = _events(3), _events(2), _events(1)

    commit_through(relay, parts.store, "m1", first)
    relay.relay()
    commit_through(relay, parts.store, "m2", second)
    commit_through(relay, parts.store, "m3", third)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == first + second + third
    assert parts.store.pending_outbox() == []
    assert not relay.wanted


def test_what_an_earlier_run_left_in_the_outbox_goes_first(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    left = _events(2)
    commit_outbox(parts.store, "m0", left)  # committed by a run that died before relaying
    relay, new = _relay(parts), _events(1)

    commit_through(relay, parts.store, "m1", new)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == left + new


def test_a_commit_whose_answer_was_lost_is_published_by_the_next_relay(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    relay.relay()  # an empty outbox
    lost, new = _events(2), _events(1)

    def answer_lost(outbox: Sequence[Envelope], _: object) -> CommitResult:
        commit_outbox(parts.store, "m1", outbox)  # it landed, but the answer never came back
        raise StoreUnavailable("connection reset")

    with pytest.raises(StoreUnavailable):
        relay.commit(lost, answer_lost)
    commit_through(relay, parts.store, "m2", new)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == lost + new


def test_a_message_committed_before_has_its_first_outbox_published(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    relay.relay()  # an empty outbox
    first = _events(2)
    commit_outbox(parts.store, "m1", first)  # a first delivery, handled by a coordinator that died

    assert commit_through(relay, parts.store, "m1", first) is CommitResult.DUPLICATE
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == first


def test_the_sweep_publishes_what_another_coordinator_left(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    relay.relay()  # an empty outbox
    theirs, ours = _events(2), _events(1)
    commit_outbox(parts.store, "m1", theirs)  # committed elsewhere; that coordinator then died
    commit_through(relay, parts.store, "m2", ours)
    relay.relay()

    relay.sweep()  # the coordinator's tick

    assert sorted(m.id for m in messages(drain(parts.settings.broker_url, listener))) == sorted(
        m.id for m in theirs + ours
    )
    assert parts.store.pending_outbox() == []


def test_what_a_failed_publish_left_goes_out_first_when_the_broker_is_back(
    tmp_path: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(bus._RETRY_POLICY, "max_retries", 1)  # give up on a dead broker soon
    broker = RedisServer(tmp_path)  # of the test's own, persistent: it is killed
    broker.start()
    try:
        with connected_parts(broker.url, namespace, tmp_path, FLEET) as parts:
            listener = listen(broker.url, parts.bus.topology.events_exchange, "#")
            relay = _relay(parts)
            relay.relay()  # an empty outbox
            first, second = _events(2), _events(1)
            commit_through(relay, parts.store, "m1", first)
            broker.kill()
            with pytest.raises(BrokerUnavailable):
                relay.relay()
            broker.start()  # its queues and bindings back from its append-only file

            commit_through(relay, parts.store, "m2", second)
            relay.relay()

            assert messages(drain(broker.url, listener)) == first + second
    finally:
        broker.kill()
