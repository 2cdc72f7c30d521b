"""A worker's outcome where its store is the broker's Redis: pushed onto every queue the
events exchange routes it to by the step that records it, exactly as its publish would
have put it there, and not published again; published as before when the exchange's
bindings changed since it was routed (a listener bound meanwhile hears it too), when a
copy's outcome was kept first, or when the store is another. On the machine's Redis, in
a namespace of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    DeployComponent,
    Envelope,
    envelope,
)
from orchestrator.runtime import Parts
from orchestrator.store import Finished, NotHeld, Routed, Store, Word
from tests.support.listening import (
    as_published,
    connected_parts,
    drain,
    listen,
    messages,
    waiting_in,
)
from tests.support.runner import StoreAsSeen, runner_on
from workers.tasks import work_key

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"
_LEASE = "component/r1/web"

pytestmark = pytest.mark.broker


@pytest.fixture
def shared(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    """A worker's parts whose store is the broker's Redis, the coordinator's queue bound."""
    with connected_parts(redis_url, namespace, tmp_path, FLEET, store_url=redis_url) as parts:
        parts.bus.declare()
        yield parts
    _forget_bindings(redis_url, parts)


def _forget_bindings(url: str, parts: Parts) -> None:
    client = redis.Redis.from_url(url)
    topology = parts.bus.topology
    names = (topology.events_exchange.name, topology.commands_exchange.name)
    client.delete(*(f"_kombu.binding.{name}" for name in names))
    client.close()


def _outcome(version: str = "2.0.0") -> Envelope:
    deployed = ComponentDeployed(
        environment="staging", service="web", version=version, previous_versions={"web-1": "1"}
    )
    return envelope(deployed, release_id="r1", actor="drover-worker")


def _waiting(parts: Parts) -> list[dict[str, Any]]:
    """What waits in the coordinator's queue, oldest first, as kombu keeps it."""
    return waiting_in(parts.settings.broker_url, parts.bus.topology.coordinator_queue.name)


def _finish(store: Store, outcome: Envelope, routed: Routed | None, owner: str) -> Finished:
    return store.finish_work("r1/web/deploy/1", outcome, _LEASE, owner, routed=routed)


def test_an_outcome_finished_waits_on_the_coordinator_s_queue_as_its_publish_puts_it(
    shared: Parts,
) -> None:
    outcome = _outcome()
    shared.store.claim_work("r1/web/deploy/1", _LEASE, "worker-a", 60)

    finished = _finish(shared.store, outcome, shared.bus.routed(outcome), "worker-a")

    assert finished == Finished(outcome, routed=True)
    shared.bus.publish(outcome)  # beside it, for comparison
    pushed, published = _waiting(shared)
    assert as_published(pushed) == as_published(published)
    assert shared.store.outcome("r1/web/deploy/1") == outcome


def test_a_listener_bound_after_the_outcome_was_routed_has_it_published_to_all(
    shared: Parts,
) -> None:
    outcome = _outcome()
    routed = shared.bus.routed(outcome)
    url = shared.settings.broker_url
    listener = listen(url, shared.bus.topology.events_exchange, "ComponentDeployed.#")

    finished = _finish(shared.store, outcome, routed, "worker-a")

    assert finished == Finished(outcome, routed=False)
    assert _waiting(shared) == []  # pushed nowhere by bindings no longer the exchange's
    shared.bus.publish(finished.kept)  # as the runner does then
    assert [w["headers"]["drover_message_id"] for w in _waiting(shared)] == [outcome.id]
    assert messages(drain(url, listener)) == [outcome]


def test_an_outcome_kept_first_is_not_pushed_again(shared: Parts) -> None:
    first, late = _outcome(), _outcome("2.0.1")
    _finish(shared.store, first, shared.bus.routed(first), "worker-a")

    finished = _finish(shared.store, late, shared.bus.routed(late), "worker-b")

    assert finished == Finished(first, routed=False)  # the caller publishes the first again
    assert len(_waiting(shared)) == 1


def test_a_finish_refused_for_a_lease_taken_over_pushes_nothing(shared: Parts) -> None:
    shared.store.claim_work("r1/web/deploy/1", _LEASE, "worker-b", 60)
    outcome = _outcome()
    last = Word("r1", "web/deploy/1", outcome.occurred_at, [outcome])

    with pytest.raises(NotHeld):
        shared.store.finish_work(
            "r1/web/deploy/1", outcome, _LEASE, "worker-a", last, routed=shared.bus.routed(outcome)
        )

    assert _waiting(shared) == []
    assert shared.store.timeline("r1") == []


def test_what_only_a_publish_sends_is_not_routed_for_a_store(
    shared: Parts, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    deploy = DeployComponent(environment="staging", service="web", version="2.0.0")
    assert shared.bus.routed(envelope(deploy, release_id="r1", actor="coordinator")) is None
    with connected_parts(
        redis_url, namespace, tmp_path, FLEET, store_url=redis_url, drill_reorder_events_ms=50
    ) as parts:
        assert parts.bus.routed(_outcome()) is None


def test_on_rabbitmq_an_outcome_is_not_routed_for_a_store(
    amqp_url: str, namespace: str, tmp_path: Path
) -> None:
    with connected_parts(amqp_url, namespace, tmp_path, FLEET) as parts:
        assert parts.bus.routed(_outcome()) is None


class _ListenerBindsAsItEnds(StoreAsSeen):
    """The worker's store, where a listener binds the events exchange just before the
    worker records its outcome: the outcome was routed by the bindings before it."""

    def __init__(self, store: Store, bind: Any) -> None:
        super().__init__(store)
        self._bind = bind

    def finish_work(self, *args: Any, **kwargs: Any) -> Finished:
        self._bind()
        finished: Finished = self._store.finish_work(*args, **kwargs)
        return finished


@pytest.mark.parametrize("listener_binds_as_it_ends", [False, True])
def test_a_worker_s_outcome_reaches_the_coordinator_once_and_every_listener(
    shared: Parts, listener_binds_as_it_ends: bool
) -> None:
    url, events = shared.settings.broker_url, shared.bus.topology.events_exchange
    bound: list[Any] = []
    store = StoreAsSeen(shared.store)
    if listener_binds_as_it_ends:
        store = _ListenerBindsAsItEnds(shared.store, lambda: bound.append(listen(url, events, "#")))
    else:
        bound.append(listen(url, events, "#"))
    runner = runner_on(shared, store)
    deploy = DeployComponent(environment="staging", service="web", version="2.0.0")
    command = envelope(deploy, release_id="r1", actor="test")

    runner.deploy(command.to_wire())

    kept = shared.store.outcome(work_key(command))
    assert kept is not None and not isinstance(kept.payload, ComponentFailed)
    assert [w["headers"]["drover_message_id"] for w in _waiting(shared)] == [kept.id]
    [listener] = bound
    assert messages(drain(url, listener)) == [kept]
