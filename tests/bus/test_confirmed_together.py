"""The coordinator's relay on a real RabbitMQ, whose publishes are confirmed together: every
message of a batch reaches its queue or exchange in order and leaves the outbox only once
the broker has confirmed it; what the broker refuses, or a connection lost under the
relay leaves, stays in the outbox and goes out with the next relay."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu.connection import Connection

from orchestrator.bus import BrokerUnavailable
from orchestrator.contract import DeployComponent, Envelope, StepStarted, decode, envelope
from orchestrator.drills import CrashPoints
from orchestrator.outbox import OutboxRelay
from orchestrator.runtime import Parts
from orchestrator.vocabulary import Step
from tests.support.listening import connected_parts, drain, listen, messages
from tests.support.outbox import commit_through

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture
def parts(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(amqp_url, namespace, tmp_path, FLEET) as connected:
        connected.bus.declare()
        connected.bus.declare_service_queues(connected.fleet.service_names())
        yield connected
        with Connection(amqp_url) as connection:
            for service in connected.fleet.service_names():
                queue = connected.bus.topology.service_queue(service)
                queue(connection.default_channel).delete()
                queue.exchange(connection.default_channel).delete()


def _command(service: str, n: int) -> Envelope:
    return envelope(
        DeployComponent(environment="staging", service=service, version=f"2.0.{n}"),
        release_id="r1",
        actor="drover-coordinator",
    )


def _event(n: int) -> Envelope:
    started = StepStarted(
        environment="staging", service="api", step=Step.DEPLOY, batch=n + 1, hosts=("h",)
    )
    return envelope(started, release_id="r1", actor="drover-coordinator")


def _commands_to(batch: Sequence[Envelope], service: str) -> list[Envelope]:
    return [
        m for m in batch if isinstance(m.payload, DeployComponent) and m.payload.service == service
    ]


def _queued(parts: Parts, service: str) -> list[Envelope]:
    """The commands waiting in ``service``'s queue, in order, taken off it."""
    taken = []
    with Connection(parts.settings.broker_url) as connection:
        waiting = connection.SimpleQueue(parts.bus.topology.service_queue(service))
        try:
            while True:
                try:
                    message = waiting.get(timeout=1)
                except waiting.Empty:
                    return taken
                args, _, _ = message.payload  # a Celery task: the command is its argument
                taken.append(decode(args[0]))
                message.ack()
        finally:
            waiting.close()


@contextmanager
def _refusing(parts: Parts, service: str) -> Iterator[None]:
    """RabbitMQ refuses a publish to ``service``'s queue once it holds one message."""
    queue = parts.bus.topology.service_queue(service).name
    name = f"{queue}-full"
    definition = '{"max-length": 1, "overflow": "reject-publish"}'
    _rabbitmqctl("set_policy", "--apply-to", "queues", name, f"^{queue}$", definition)
    try:
        yield
    finally:
        _rabbitmqctl("clear_policy", name)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_a_batch_reaches_its_queues_and_exchange_in_order_and_leaves_the_outbox(
    parts: Parts,
) -> None:
    listener = listen(parts.settings.broker_url, parts.bus.topology.events_exchange, "#")
    relay = OutboxRelay(parts.store, parts.bus, CrashPoints())
    batch = [
        message
        for n in range(40)
        for message in (_command("web", n), _command("api", n), _event(n))
    ]

    commit_through(relay, parts.store, "m1", batch)
    relay.relay()

    assert _queued(parts, "web") == _commands_to(batch, "web")
    assert _queued(parts, "api") == _commands_to(batch, "api")
    assert messages(drain(parts.settings.broker_url, listener)) == batch[2::3]
    assert parts.store.pending_outbox() == []


def test_what_rabbitmq_refuses_stays_in_the_outbox_until_it_is_taken(parts: Parts) -> None:
    relay = OutboxRelay(parts.store, parts.bus, CrashPoints())
    first, *refused = batch = [_command("web", n) for n in range(3)]
    commit_through(relay, parts.store, "m1", batch)

    with _refusing(parts, "web"):
        with pytest.raises(BrokerUnavailable, match="refused"):
            relay.relay()
        assert parts.store.pending_outbox() == refused  # the first is on the broker
        assert _queued(parts, "web") == [first]

    relay.relay()  # unsure of the outbox after a failure: read back, oldest first

    assert _queued(parts, "web") == refused
    assert parts.store.pending_outbox() == []


def test_a_connection_the_broker_closed_is_made_anew_and_nothing_is_lost(parts: Parts) -> None:
    relay = OutboxRelay(parts.store, parts.bus, CrashPoints())
    before, after = [_command("web", 1)], [_command("web", 2), _command("web", 3)]
    commit_through(relay, parts.store, "m1", before)
    relay.relay()
    _rabbitmqctl("close_all_connections", "closed by a test")
    commit_through(relay, parts.store, "m2", after)

    with pytest.raises(BrokerUnavailable):
        relay.relay()  # on the connection the broker closed
    relay.relay()

    assert _queued(parts, "web") == before + after
    assert parts.store.pending_outbox() == []
