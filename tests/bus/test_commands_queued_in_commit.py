"""A worker's command committed by a coordinator whose store is the broker's Redis: pushed
onto its service's queue by the commit itself, in the same atomic step, exactly as its
publish would have put it there, and never published again by the relay; events still go
through the outbox, a commit refused pushes nothing, and a store on another database
leaves the command to the relay. On the machine's Redis, in a namespace of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.contract import DeployComponent, Envelope, StepStarted, envelope
from orchestrator.drills import CrashPoints
from orchestrator.outbox import OutboxRelay
from orchestrator.runtime import Parts
from orchestrator.store import CommitResult
from orchestrator.vocabulary import Step
from tests.support.listening import (
    as_published,
    connected_parts,
    drain,
    listen,
    messages,
    waiting_in,
)
from tests.support.outbox import commit_through

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture
def shared(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    """A coordinator's parts whose store is the broker's Redis."""
    with connected_parts(redis_url, namespace, tmp_path, FLEET, store_url=redis_url) as parts:
        parts.bus.declare_service_queues(["web"])
        yield parts
    _forget_bindings(redis_url, parts)


@pytest.fixture
def apart(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    """A coordinator's parts whose store is another database of the broker's Redis."""
    store_url = redis_url.rsplit("/", 1)[0] + "/1"
    with connected_parts(redis_url, namespace, tmp_path, FLEET, store_url=store_url) as parts:
        parts.bus.declare_service_queues(["web"])
        yield parts
    _forget_bindings(redis_url, parts)
    client = redis.Redis.from_url(store_url)
    keys = list(client.scan_iter(match=f"{parts.settings.namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _forget_bindings(url: str, parts: Parts) -> None:
    client = redis.Redis.from_url(url)
    queue = parts.bus.topology.service_queue("web")
    events = parts.bus.topology.events_exchange
    client.delete(f"_kombu.binding.{queue.name}", f"_kombu.binding.{events.name}")
    client.close()


def _command(release_id: str = "r1") -> Envelope:
    deploy = DeployComponent(environment="staging", service="web", version="2.0.0")
    return envelope(deploy, release_id=release_id, actor="drover-coordinator")


def _event() -> Envelope:
    started = StepStarted(
        environment="staging", service="web", step=Step.DEPLOY, batch=1, hosts=("h",)
    )
    return envelope(started, release_id="r1", actor="drover-coordinator")


def _waiting(parts: Parts) -> list[dict[str, Any]]:
    """What waits in the web service's queue, oldest first, as kombu keeps it."""
    return waiting_in(parts.settings.broker_url, parts.bus.topology.service_queue("web").name)


def test_a_command_committed_waits_on_its_queue_with_nothing_left_to_publish(
    shared: Parts,
) -> None:
    relay = OutboxRelay(shared.store, shared.bus, CrashPoints())
    relay.relay()  # the outbox read once: the relay knows it holds nothing else
    command = _command()

    assert commit_through(relay, shared.store, "m1", [command]) is CommitResult.COMMITTED

    [waiting] = _waiting(shared)  # before any relay: the commit put it there
    assert waiting["headers"]["id"] == command.id
    assert shared.store.pending_outbox() == []
    assert not relay.wanted
    relay.sweep()
    assert len(_waiting(shared)) == 1  # and no relay sends it again


def test_a_command_queued_by_its_commit_is_the_message_its_publish_makes(
    shared: Parts,
) -> None:
    relay = OutboxRelay(shared.store, shared.bus, CrashPoints())
    command = _command()
    shared.bus.publish(command)

    commit_through(relay, shared.store, "m1", [command])

    published, queued = _waiting(shared)
    assert as_published(queued) == as_published(published)


def test_a_commit_refused_as_a_duplicate_queues_nothing(shared: Parts) -> None:
    relay = OutboxRelay(shared.store, shared.bus, CrashPoints())
    commit_through(relay, shared.store, "m1", [_command()])

    assert commit_through(relay, shared.store, "m1", [_command()]) is CommitResult.DUPLICATE

    assert len(_waiting(shared)) == 1


def test_events_of_the_same_commit_still_go_out_through_the_outbox(shared: Parts) -> None:
    listener = listen(shared.settings.broker_url, shared.bus.topology.events_exchange, "#")
    relay = OutboxRelay(shared.store, shared.bus, CrashPoints())
    event, command = _event(), _command()

    commit_through(relay, shared.store, "m1", [event, command])
    assert [m.id for m in shared.store.pending_outbox()] == [event.id]
    relay.relay()

    assert messages(drain(shared.settings.broker_url, listener)) == [event]
    assert [w["headers"]["id"] for w in _waiting(shared)] == [command.id]
    assert shared.store.pending_outbox() == []


def test_a_store_on_another_database_leaves_the_command_to_the_relay(apart: Parts) -> None:
    relay = OutboxRelay(apart.store, apart.bus, CrashPoints())
    command = _command()

    commit_through(relay, apart.store, "m1", [command])
    assert [m.id for m in apart.store.pending_outbox()] == [command.id]
    assert _waiting(apart) == []
    relay.relay()

    assert [w["headers"]["id"] for w in _waiting(apart)] == [command.id]
    assert apart.store.pending_outbox() == []
