"""Metric gates judged on real readings: the Graphite test server, and the simulated fleet."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.fleet.checks import GraphiteSource, MetricGate, SimulatedSource
from tests.support.graphite_server import GraphiteServer
from workers.verification.gates import GateResult, Verdict, judge, overall
from workers.verification.metrics import GraphiteReader, MetricsUnavailable, SimulatedMetrics

NOW = datetime.now(UTC).replace(microsecond=0)
DEPLOYED = NOW - timedelta(seconds=300)


@pytest.fixture
def graphite() -> Iterator[GraphiteServer]:
    with GraphiteServer() as server:
        yield server


def gate(target: str, **fields: Any) -> MetricGate:
    return MetricGate.model_validate(
        {"name": "g", "source": "metrics", "target": target, "window_s": 300, **fields}
    )


def graphite_reader(url: str) -> GraphiteReader:
    return GraphiteReader(GraphiteSource(kind="graphite", url=url, timeout_s=2))


def judged(
    rule: MetricGate,
    url_or_reader: str | GraphiteReader | SimulatedMetrics,
    *,
    deployed_at: datetime = DEPLOYED,
    now: datetime = NOW,
) -> GateResult:
    reader = graphite_reader(url_or_reader) if isinstance(url_or_reader, str) else url_or_reader
    return judge(
        rule, reader, environment="prod", service="checkout", deployed_at=deployed_at, now=now
    )


def every_10s(start: datetime, end: datetime, value: float) -> list[tuple[float, float]]:
    """One point per 10 s in (start, end], as StatsD flushes into Graphite."""
    first, last = int(start.timestamp()), int(end.timestamp())
    return [(t, value) for t in range(first + 10, last + 1, 10)]


def after(value: float) -> list[tuple[float, float]]:
    return every_10s(DEPLOYED, NOW, value)


def before(value: float) -> list[tuple[float, float]]:
    return every_10s(DEPLOYED - timedelta(seconds=300), DEPLOYED, value)


# max and min


@pytest.mark.parametrize(
    ("error_rate", "verdict", "said"),
    [(0.4, "pass", "avg 0.4 is at most the max of 1"), (2.5, "fail", "avg 2.5 is above the max")],
)
def test_max(graphite: GraphiteServer, error_rate: float, verdict: str, said: str) -> None:
    graphite.add("stats.prod.checkout.error_rate", after(error_rate))

    result = judged(gate("stats.{environment}.{service}.error_rate", max=1), graphite.url)

    assert result.verdict == verdict
    assert said in result.reason
    assert result.inputs == {"window_s": 300.0, "value": error_rate, "points": 30}
    assert result.thresholds == {"max": 1, "min_points": 1}


@pytest.mark.parametrize(("rate", "verdict"), [(80, "pass"), (49.9, "fail")])
def test_min(graphite: GraphiteServer, rate: float, verdict: str) -> None:
    graphite.add("stats.checkout.requests", after(rate))

    assert judged(gate("stats.{service}.requests", min=50), graphite.url).verdict == verdict


@pytest.mark.parametrize(
    ("aggregate", "value"), [("avg", 3), ("sum", 9), ("min", 1), ("max", 5), ("last", 3)]
)
def test_aggregates(graphite: GraphiteServer, aggregate: str, value: float) -> None:
    base = int(DEPLOYED.timestamp())
    graphite.add("a", [(base + 10, 1), (base + 20, 5), (base + 30, 3)])

    result = judged(gate("a", aggregate=aggregate, max=100), graphite.url)

    assert result.inputs["value"] == value


# The window


def test_too_few_points_is_inconclusive_saying_how_many(graphite: GraphiteServer) -> None:
    graphite.add("a", after(1)[:3])

    result = judged(gate("a", max=5, min_points=5), graphite.url)

    assert result.verdict == "inconclusive"
    assert "has 3 point(s), fewer than the 5 needed" in result.reason
    assert result.inputs["points"] == 3
    assert result.inputs["value"] is None


def test_the_window_never_reaches_back_before_the_deploy(graphite: GraphiteServer) -> None:
    # Judged a minute after the deploy: five minutes of the old version's healthy
    # figures must not outvote one minute of the new version's errors.
    graphite.add("errors", before(0))
    now = DEPLOYED + timedelta(seconds=60)
    graphite.add("errors", every_10s(DEPLOYED, now, 10))

    result = judged(gate("errors", max=1, min_ratio_to_before=0.5), graphite.url, now=now)

    assert result.verdict == "fail"
    assert result.inputs["window_s"] == 60
    window, earlier = graphite.requests
    assert window.params["from"] == [str(int(DEPLOYED.timestamp()))]
    assert earlier.params["from"] == [str(int(DEPLOYED.timestamp()) - 60)]
    assert earlier.params["until"] == [str(int(DEPLOYED.timestamp()))]


def test_judged_no_later_than_the_deploy_is_inconclusive(graphite: GraphiteServer) -> None:
    result = judged(gate("a", max=1), graphite.url, now=DEPLOYED)

    assert result.verdict == "inconclusive"
    assert "no window yet" in result.reason
    assert graphite.requests == []


# Against the time before the deploy: a flat-lined business signal


@pytest.mark.parametrize(("checkouts", "verdict"), [(0, "fail"), (115, "pass")])
def test_checkouts_against_before(graphite: GraphiteServer, checkouts: float, verdict: str) -> None:
    graphite.add("stats.checkout.checkouts_per_min", before(120) + after(checkouts))

    rule = gate("stats.{service}.checkouts_per_min", min_ratio_to_before=0.8)
    result = judged(rule, graphite.url)

    assert result.verdict == verdict
    assert result.inputs["before"] == 120
    assert result.inputs["before_points"] == 30
    assert result.inputs["ratio_to_before"] == pytest.approx(checkouts / 120)
    assert f"{checkouts:g} after against 120 before" in result.reason
    assert result.thresholds == {"min_ratio_to_before": 0.8, "min_points": 1}


def test_nothing_before_the_deploy_is_inconclusive(graphite: GraphiteServer) -> None:
    graphite.add("checkouts", after(100))  # a new metric: no history yet

    result = judged(gate("checkouts", min_ratio_to_before=0.8, min_points=3), graphite.url)

    assert result.verdict == "inconclusive"
    assert "the window before the deploy has 0 point(s)" in result.reason


def test_zero_before_the_deploy_is_inconclusive(graphite: GraphiteServer) -> None:
    graphite.add("checkouts", before(0) + after(0))

    result = judged(gate("checkouts", min_ratio_to_before=0.8), graphite.url)

    assert result.verdict == "inconclusive"
    assert "it was 0 before the deploy: no ratio to that" in result.reason


# The canary against the baseline


@pytest.mark.parametrize(("canary", "verdict"), [(110, "pass"), (150, "fail")])
def test_canary_against_baseline(graphite: GraphiteServer, canary: float, verdict: str) -> None:
    graphite.add("stats.checkout.canary.latency_ms", after(canary))
    graphite.add("stats.checkout.baseline.latency_ms", after(100))

    rule = gate("stats.{service}.{group}.latency_ms", max_ratio_to_baseline=1.2)
    result = judged(rule, graphite.url)

    assert result.verdict == verdict
    assert result.inputs["baseline"] == 100
    assert result.inputs["ratio_to_baseline"] == pytest.approx(canary / 100)
    assert f"canary {canary:g} against baseline 100" in result.reason


@pytest.mark.parametrize(("canary", "verdict"), [(3, "fail"), (0, "pass")])
def test_a_baseline_of_zero(graphite: GraphiteServer, canary: float, verdict: str) -> None:
    graphite.add("errors.canary", after(canary))
    graphite.add("errors.baseline", after(0))

    assert judged(gate("errors.{group}", max_ratio_to_baseline=2), graphite.url).verdict == verdict


def test_a_baseline_without_points_is_inconclusive(graphite: GraphiteServer) -> None:
    graphite.add("errors.canary", after(1))

    result = judged(gate("errors.{group}", max_ratio_to_baseline=2), graphite.url)

    assert result.verdict == "inconclusive"
    assert "the baseline's window has 0 point(s)" in result.reason


def test_a_broken_threshold_beats_a_missing_reading(graphite: GraphiteServer) -> None:
    graphite.add("errors.canary", after(9))  # no baseline at all

    result = judged(gate("errors.{group}", max=5, max_ratio_to_baseline=2), graphite.url)

    assert result.verdict == "fail"
    assert "avg 9 is above the max of 5" in result.reason
    assert "and besides, the baseline's window has 0 point(s)" in result.reason


# A source that cannot answer


def test_a_source_that_is_down_is_inconclusive_never_a_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = judged(gate("errors", max=1), f"http://127.0.0.1:{port}")

    assert result.verdict == "inconclusive"
    assert "the window since the deploy could not be read" in result.reason
    assert "refused" in result.reason


def test_a_source_answering_errors_is_inconclusive(graphite: GraphiteServer) -> None:
    graphite.answer(500, "carbon is down")

    result = judged(gate("errors", max=1), graphite.url)

    assert result.verdict == "inconclusive"
    assert "answered 500: carbon is down" in result.reason


def test_a_result_is_plain_json(graphite: GraphiteServer) -> None:
    graphite.add("stats.checkout.checkouts_per_min", before(120) + after(60))

    result = judged(
        gate("stats.{service}.checkouts_per_min", min_ratio_to_before=0.8), graphite.url
    )

    assert json.loads(json.dumps(asdict(result))) == {
        "gate": "g",
        "verdict": "fail",
        "inputs": {
            "window_s": 300.0,
            "value": 60,
            "points": 30,
            "before": 120,
            "before_points": 30,
            "ratio_to_before": 0.5,
        },
        "thresholds": {"min_ratio_to_before": 0.8, "min_points": 1},
        "reason": "gate g fails: 60 after against 120 before (ratio 0.5)"
        " is below the min ratio of 0.8.",
    }


# The simulated fleet's metrics

SOURCE = SimulatedSource.model_validate(
    {
        "kind": "simulated",
        "metrics": {
            "errors": {"value": 1, "by_version": {"2.0.0": 5}},
            "checkouts": {"value": 40, "by_version": {"2.0.0": 0}},
        },
    }
)
HOSTS = {"canary": ["web-1"], "baseline": ["web-2"], "all": ["web-1", "web-2", "web-3"]}
BEFORE = {"web-1": "1.0.0", "web-2": "1.0.0", "web-3": "1.0.0"}


def simulated(now_versions: dict[str, str]) -> SimulatedMetrics:
    return SimulatedMetrics(
        SOURCE,
        hosts_by_group=HOSTS,
        versions_now=lambda: now_versions,
        versions_before=BEFORE,
        changed_at=DEPLOYED,
    )


def test_simulated_values_sum_the_groups_hosts_by_their_versions() -> None:
    metrics = simulated({**BEFORE, "web-1": "2.0.0"})
    window = (NOW - timedelta(seconds=60), NOW)

    assert metrics.read("errors:canary", *window) == [5.0] * 6
    assert metrics.read("errors:baseline", *window) == [1.0] * 6
    assert metrics.read("errors", *window) == [7.0] * 6
    assert metrics.read("errors:all", *window) == [7.0] * 6


def test_a_simulated_window_ending_by_the_change_sees_the_versions_before_it() -> None:
    metrics = simulated({**BEFORE, "web-1": "2.0.0"})

    assert metrics.read("errors:canary", DEPLOYED - timedelta(seconds=30), DEPLOYED) == [1.0] * 3
    later = DEPLOYED + timedelta(seconds=1)
    assert metrics.read("errors:canary", DEPLOYED, later) == [5.0]  # at least one point


def test_simulated_versions_are_asked_at_each_read() -> None:
    versions = dict(BEFORE)
    metrics = simulated(versions)
    window = (NOW - timedelta(seconds=10), NOW)

    assert metrics.read("errors", *window) == [3.0]
    versions["web-3"] = "2.0.0"
    assert metrics.read("errors", *window) == [7.0]


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("latency", "no simulated metric 'latency' \\(known: checkouts, errors\\)"),
        ("errors:blue", "unknown group 'blue'"),
    ],
)
def test_unknown_simulated_targets_are_unavailable(target: str, complaint: str) -> None:
    with pytest.raises(MetricsUnavailable, match=complaint):
        simulated(BEFORE).read(target, DEPLOYED, NOW)


def test_a_group_the_fleet_has_not_given_is_unavailable() -> None:
    metrics = SimulatedMetrics(
        SOURCE,
        hosts_by_group={"all": ["web-1"]},
        versions_now=lambda: BEFORE,
        versions_before=BEFORE,
        changed_at=DEPLOYED,
    )

    with pytest.raises(MetricsUnavailable, match="no 'canary' hosts"):
        metrics.read("errors:canary", DEPLOYED, NOW)


def test_gates_on_the_simulated_fleet() -> None:
    metrics = simulated({**BEFORE, "web-1": "2.0.0"})

    canary = judged(gate("errors:{group}", max_ratio_to_baseline=2), metrics)
    flat = judged(gate("checkouts:{group}", min_ratio_to_before=0.5), metrics)
    healthy = judged(gate("errors:{group}", max_ratio_to_baseline=2), simulated(BEFORE))

    assert (canary.verdict, canary.inputs["ratio_to_baseline"]) == ("fail", 5)
    assert (flat.verdict, flat.inputs["value"], flat.inputs["before"]) == ("fail", 0, 40)
    assert healthy.verdict == "pass"


# Several gates


def result_of(name: str, verdict: Verdict) -> GateResult:
    return GateResult(name, verdict, {}, {}, "")


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], "pass"),
        (["pass", "pass"], "pass"),
        (["pass", "inconclusive"], "inconclusive"),
        (["inconclusive", "fail", "pass"], "fail"),
    ],
)
def test_overall(verdicts: list[Verdict], expected: Verdict) -> None:
    assert overall([result_of(f"g{i}", v) for i, v in enumerate(verdicts)]) == expected
