"""The coordinator's outbox relay, on a real Redis broker and a real store: every message a
commit put in the outbox reaches the bus, oldest first, including those the relay was
never told of (an earlier run's, a commit whose answer was lost)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from orchestrator.bus import Topology
from orchestrator.contract import Envelope, StepStarted, envelope
from orchestrator.drills import CrashPoints
from orchestrator.outbox import OutboxRelay
from orchestrator.runtime import Parts
from orchestrator.store import CommitResult, Store
from orchestrator.vocabulary import Step
from tests.support.listening import connected_parts, drain, listen, messages

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


def _commit(store: Store, message_id: str, outbox: Sequence[Envelope]) -> CommitResult:
    return store.commit(
        "r1",
        message_id=message_id,
        expected_revision=None,
        state=None,
        outbox=outbox,
        timeline=outbox,
    )


def _relay(parts: Parts) -> OutboxRelay:
    return OutboxRelay(parts.store, parts.bus, CrashPoints())


def test_what_commits_put_in_the_outbox_is_published_in_order(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    first, second = _events(3), _events(2)

    relay.offered(first)
    _commit(parts.store, "m1", first)
    relay.relay()
    relay.offered(second)
    _commit(parts.store, "m2", second)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == first + second
    assert parts.store.pending_outbox() == []


def test_what_an_earlier_run_left_in_the_outbox_goes_first(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    left = _events(2)
    _commit(parts.store, "m0", left)  # committed by a run that died before relaying
    relay, new = _relay(parts), _events(1)

    relay.offered(new)
    _commit(parts.store, "m1", new)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == left + new


def test_a_commit_whose_answer_was_lost_is_published_by_the_next_relay(parts: Parts) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = _relay(parts)
    relay.relay()  # an empty outbox
    lost = _events(2)
    _commit(parts.store, "m1", lost)  # it landed, but the answer never came back
    relay.offered(lost)  # the message delivered again
    assert _commit(parts.store, "m1", lost) is CommitResult.DUPLICATE
    new = _events(1)

    relay.offered(new)
    _commit(parts.store, "m2", new)
    relay.relay()

    assert messages(drain(parts.settings.broker_url, listener)) == lost + new
