"""The Graphite reader against a real (test) render API over HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from orchestrator.fleet.base import Placeholders
from orchestrator.fleet.checks import GraphiteSource
from tests.support.graphite_server import GraphiteServer
from tests.support.ports import free_port
from workers.http_call import http_request
from workers.verification.metrics import GraphiteReader, MetricsUnavailable

T0 = 1_700_000_000  # whole minutes, as Graphite stores them


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


@pytest.fixture
def graphite() -> Iterator[GraphiteServer]:
    with GraphiteServer() as server:
        yield server


def reader(url: str, timeout_s: float = 2) -> GraphiteReader:
    return GraphiteReader(GraphiteSource(kind="graphite", url=url, timeout_s=timeout_s))


def test_only_the_window_is_read_and_the_request_is_graphites(graphite: GraphiteServer) -> None:
    graphite.add("stats.checkout.errors", [(T0 + 10 * i, float(i)) for i in range(1, 11)])

    values = reader(graphite.url).read("stats.checkout.errors", at(30), at(60))

    # Graphite's window leaves out its first second: from < timestamp <= until.
    assert values == [4.0, 5.0, 6.0]
    (request,) = graphite.requests
    assert request.path == "/render"
    assert request.params == {
        "target": ["stats.checkout.errors"],
        "from": [str(T0 + 30)],
        "until": [str(T0 + 60)],
        "format": ["json"],
    }


def test_nulls_are_dropped(graphite: GraphiteServer) -> None:
    graphite.add("latency", [(T0 + 10, 1.5), (T0 + 20, None), (T0 + 30, 3), (T0 + 40, None)])

    assert reader(graphite.url).read("latency", at(0), at(60)) == [1.5, 3.0]


def test_targets_with_functions_are_url_encoded(graphite: GraphiteServer) -> None:
    template = "divideSeries(sumSeries(stats.{service}.*.errors),sumSeries(stats.{service}.*.hits))"
    target = Placeholders.fill(template, {"service": "checkout"})
    graphite.add(target, [(T0 + 10, 0.25)])

    assert reader(graphite.url).read(target, at(0), at(60)) == [0.25]
    (request,) = graphite.requests
    assert request.params["target"] == [target]
    assert "divideSeries%28sumSeries%28stats.checkout.%2A.errors%29%2C" in request.query


def test_a_wildcard_gives_every_series_values_one_series_after_the_other(
    graphite: GraphiteServer,
) -> None:
    graphite.add("stats.checkout.web-1.errors", [(T0 + 10, 1), (T0 + 20, 2)])
    graphite.add("stats.checkout.web-2.errors", [(T0 + 10, 3), (T0 + 20, None)])
    graphite.add("stats.checkout.web-2.db.errors", [(T0 + 10, 99)])  # * does not cross a dot
    graphite.add("stats.payments.web-1.errors", [(T0 + 10, 99)])

    values = reader(graphite.url).read("stats.checkout.*.errors", at(0), at(60))

    assert values == [1.0, 2.0, 3.0]


def test_an_unknown_target_is_no_values_not_an_error(graphite: GraphiteServer) -> None:
    assert reader(graphite.url).read("stats.nothing", at(0), at(60)) == []


def test_an_error_status_is_unavailable_with_the_url_and_an_excerpt(
    graphite: GraphiteServer,
) -> None:
    graphite.answer(500, "carbon-cache unreachable")

    with pytest.raises(MetricsUnavailable) as caught:
        reader(graphite.url).read("stats.checkout.errors", at(0), at(60))

    message = str(caught.value)
    assert "answered 500: carbon-cache unreachable" in message
    assert f"{graphite.url}/render?target=stats.checkout.errors" in message


def test_an_answer_that_is_not_json_is_unavailable(graphite: GraphiteServer) -> None:
    graphite.answer(200, "<html>Welcome to nginx!</html>")

    with pytest.raises(MetricsUnavailable, match="not JSON: <html>Welcome to nginx!"):
        reader(graphite.url).read("stats.checkout.errors", at(0), at(60))


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ('{"error": "no such function"}', "expected a list of series"),
        ('[{"target": "a"}]', "a series without datapoints"),
        ('[{"target": "a", "datapoints": [["12", 1700000010]]}]', "not \\[value, timestamp\\]"),
        ('[{"target": "a", "datapoints": [[1.0]]}]', "not \\[value, timestamp\\]"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_unavailable(
    graphite: GraphiteServer, body: str, complaint: str
) -> None:
    graphite.answer(200, body)

    with pytest.raises(MetricsUnavailable, match=complaint):
        reader(graphite.url).read("a", at(0), at(60))


def test_a_refused_connection_is_unavailable() -> None:
    with pytest.raises(MetricsUnavailable, match=r"no answer.*refused"):
        reader(f"http://127.0.0.1:{free_port()}").read("a", at(0), at(60))


def test_a_slow_graphite_is_unavailable_at_the_sources_timeout(graphite: GraphiteServer) -> None:
    graphite.slow(3)
    began = time.monotonic()

    with pytest.raises(MetricsUnavailable, match="timed out"):
        reader(graphite.url, timeout_s=0.3).read("a", at(0), at(60))

    assert time.monotonic() - began < 2


def test_credentials_go_in_a_header_and_never_in_an_error(graphite: GraphiteServer) -> None:
    url = graphite.url.replace("http://", "http://drover:s3cr%40t@")
    graphite.add("a", [(T0 + 10, 1)])

    assert reader(url).read("a", at(0), at(60)) == [1.0]
    expected = base64.b64encode(b"drover:s3cr@t").decode()
    assert graphite.requests[0].headers["Authorization"] == f"Basic {expected}"

    graphite.answer(503)
    with pytest.raises(MetricsUnavailable) as caught:
        reader(url).read("a", at(0), at(60))
    assert "answered 503" in str(caught.value)
    assert "s3cr" not in str(caught.value)
    assert "drover" not in str(caught.value)


def test_a_time_without_a_zone_is_refused(graphite: GraphiteServer) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        reader(graphite.url).read("a", datetime(2024, 1, 1), at(60))


def test_the_test_server_takes_relative_times_too(graphite: GraphiteServer) -> None:
    now = time.time()
    graphite.add("a", [(now - 600, 1), (now - 120, 2)])

    answer = http_request(
        "GET", f"{graphite.url}/render?target=a&from=-5min&until=now&format=json", timeout_s=2
    )

    assert [v for v, _ in answer.json()[0]["datapoints"]] == [2]
