"""The live feed of step reports (``ns.progress``), read by a listener of one's own on
real brokers: Redis and RabbitMQ.

A listener must get every report a worker published, in the order made, one release
per message, with the headers that let it filter without parsing bodies; reports made
close together come as one message, none waits for another to be sent, and none is left
behind when the process stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.bus import Topology
from orchestrator.contract import Envelope, StepStarted, envelope
from orchestrator.runtime import Parts
from orchestrator.vocabulary import Step
from tests.support.listening import connected_parts, drain, forget_on_rabbitmq, listen, messages

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"

pytestmark = pytest.mark.broker


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url")
    yield url
    topology = Topology(namespace)
    if request.param == "redis":  # kombu's binding table of the exchange
        client = redis.Redis.from_url(url)
        client.delete(f"_kombu.binding.{topology.progress_exchange.name}")
        client.close()
    else:
        forget_on_rabbitmq(url, namespace, FLEET)


@pytest.fixture
def parts(broker_url: str, namespace: str, tmp_path: Path) -> Iterator[Parts]:
    with connected_parts(broker_url, namespace, tmp_path, FLEET) as connected:
        yield connected


def _reports(release_id: str, count: int) -> list[Envelope]:
    return [
        envelope(
            StepStarted(
                environment="staging", service="api", step=Step.DEPLOY, batch=n + 1, hosts=("h",)
            ),
            release_id=release_id,
            actor="worker-1",
        )
        for n in range(count)
    ]


def test_every_report_reaches_a_listener_in_order_one_release_per_message(
    parts: Parts,
) -> None:
    first, second = _reports("R-first", 30), _reports("R-second", 30)
    url, exchange = parts.settings.broker_url, parts.bus.topology.progress_exchange
    everything = listen(url, exchange, "Progress.*")
    only_second = listen(url, exchange, "Progress.R-second")

    for n in range(0, 30, 3):  # as two workers would, a few reports at a time
        parts.bus.publish_progress(first[n : n + 3])
        parts.bus.publish_progress(second[n : n + 3])

    heard = drain(url, everything)
    for headers, reports in heard:
        assert len({r.release_id for r in reports}) == 1
        assert headers["drover_type"] == "Progress"
        assert headers["drover_batch"] == len(reports)
        assert headers["drover_release_id"] == reports[0].release_id
    assert [r for r in messages(heard) if r.release_id == "R-first"] == first
    assert [r for r in messages(heard) if r.release_id == "R-second"] == second
    assert messages(drain(url, only_second)) == second


def test_reports_made_within_one_interval_reach_a_listener_as_one_message(
    broker_url: str, namespace: str, tmp_path: Path
) -> None:
    with connected_parts(
        broker_url, namespace, tmp_path, FLEET, progress_feed_every_s=0.5
    ) as parts:
        reports = _reports("R-burst", 40)
        everything = listen(broker_url, parts.bus.topology.progress_exchange, "Progress.*")
        for n in range(0, 40, 4):  # ten steps' reports, as fast as a simulated fleet goes
            parts.bus.publish_progress(reports[n : n + 4])

        heard = drain(broker_url, everything)

    assert [len(batch) for _, batch in heard] == [40]
    assert messages(heard) == reports


def test_a_report_is_published_without_waiting_for_another_one(parts: Parts) -> None:
    url, exchange = parts.settings.broker_url, parts.bus.topology.progress_exchange
    everything = listen(url, exchange, "Progress.*")
    report = _reports("R-lone", 1)

    parts.bus.publish_progress(report)

    assert messages(drain(url, everything)) == report  # heard with the bus still open


def test_reports_still_waiting_are_published_when_the_bus_closes(
    broker_url: str, namespace: str, tmp_path: Path
) -> None:
    reports = _reports("R-last", 3)
    with connected_parts(
        broker_url, namespace, tmp_path, FLEET, progress_feed_every_s=10.0
    ) as parts:
        everything = listen(broker_url, parts.bus.topology.progress_exchange, "Progress.*")
        parts.bus.publish_progress(reports)

    assert messages(drain(broker_url, everything)) == reports


def test_reports_of_several_releases_cannot_be_handed_over_as_one(parts: Parts) -> None:
    mixed = _reports("R-one", 1) + _reports("R-two", 1)

    with pytest.raises(ValueError, match="one release"):
        parts.bus.publish_progress(mixed)
