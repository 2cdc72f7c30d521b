"""Metrics from real envelopes, sent by the real ``statsd`` client to a real UDP socket."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from structlog.testing import capture_logs

from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRequest,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    Envelope,
    GateJudged,
    HostDrained,
    Message,
    Problem,
    ReleaseAccepted,
    ReleaseFailed,
    ReleaseRejected,
    ReleaseRetried,
    ReleaseRolledBack,
    ReleaseSucceeded,
    StartRelease,
    Step,
    StepFailed,
    StepSucceeded,
    envelope,
)
from orchestrator.metrics import (
    UNKNOWN_ENVIRONMENT,
    NoMetrics,
    StatsdMetrics,
    create_metrics,
    metric_name,
    sanitise,
)
from tests.support.statsd_listener import Packet, StatsdListener

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RELEASE = "R-1"
ENV = "prod"
SERVICE = "checkout"
MARKER = "zz-marker"  # a queue gauge sent after what a test checks (see take_until)

Sent = list[tuple[str, float, str]]


# --- building messages ------------------------------------------------------------------


def message(
    payload: Message, at_s: float = 0, release_id: str = RELEASE, message_id: str | None = None
) -> Envelope:
    return envelope(
        payload,
        release_id=release_id,
        actor="test",
        occurred_at=T0 + timedelta(seconds=at_s),
        message_id=message_id,
    )


def accepted(environment: str = ENV) -> ReleaseAccepted:
    request = ComponentRequest(service=SERVICE, version="2.0.0")
    return ReleaseAccepted(environment=environment, reason="test", components=(request,))


def started(service: str = SERVICE) -> ComponentStarted:
    return ComponentStarted(
        environment=ENV, service=service, version="2.0.0", previous_versions={"h1": "1.0.0"}
    )


def step_succeeded(step: Step = Step.DEPLOY, *, rollback: bool = False) -> StepSucceeded:
    return StepSucceeded(
        environment=ENV,
        service=SERVICE,
        step=step,
        batch=1,
        hosts=("h1",),
        rollback=rollback,
        duration_ms=1234.5,
    )


def step_failed(step: Step = Step.VERIFY, *, rollback: bool = False) -> StepFailed:
    return StepFailed(
        environment=ENV,
        service=SERVICE,
        step=step,
        batch=1,
        hosts=("h1",),
        rollback=rollback,
        host="h1",
        reason="health check failed",
    )


def gate(verdict: Literal["pass", "inconclusive", "fail"] = "pass", **inputs: Any) -> GateJudged:
    return GateJudged(
        environment=ENV,
        service=SERVICE,
        step=Step.GATE,
        gate="error-rate",
        verdict=verdict,
        inputs=inputs,
        thresholds={"max": 1.0},
        reason="",
    )


COMPONENT_OUTCOMES: list[tuple[Message, str]] = [
    (
        ComponentDeployed(
            environment=ENV, service=SERVICE, version="2.0.0", previous_versions={"h1": "1.0.0"}
        ),
        "deployed",
    ),
    (
        ComponentFailed(
            environment=ENV, service=SERVICE, version="2.0.0", reason="boom", restored=True
        ),
        "failed",
    ),
    (
        ComponentRolledBack(environment=ENV, service=SERVICE, to_versions={"h1": "1.0.0"}),
        "rolled_back",
    ),
    (
        ComponentRollbackFailed(environment=ENV, service=SERVICE, reason="boom", hosts=("h1",)),
        "rollback_failed",
    ),
]
RELEASE_OUTCOMES: list[tuple[Message, str]] = [
    (ReleaseSucceeded(), "succeeded"),
    (ReleaseRolledBack(reason="gate failed"), "rolled_back"),
    (ReleaseFailed(reason="rollback failed", needs_attention=("checkout",)), "failed"),
    (ReleaseRejected(problems=(Problem(path="", reason="refused by alice"),)), "rejected"),
]


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[StatsdListener]:
    with StatsdListener() as statsd:
        yield statsd


@pytest.fixture
def metrics(listener: StatsdListener) -> Iterator[StatsdMetrics]:
    client = StatsdMetrics("127.0.0.1", listener.port)
    yield client
    client.close()


def sent(
    metrics: StatsdMetrics, listener: StatsdListener, *messages: Envelope, prefix: str = "drover"
) -> Sent:
    """What ``record`` sent for ``messages``, in order, as (name, value, type)."""
    for each in messages:
        metrics.record(each)
    return _until_marker(metrics, listener, prefix)


def _until_marker(metrics: StatsdMetrics, listener: StatsdListener, prefix: str) -> Sent:
    metrics.queue_depth(MARKER, ready=0, in_flight=None, oldest_age_s=None)
    marker = ".".join(filter(None, [prefix, "queue", MARKER, "ready"]))
    return [_triple(p) for p in listener.take_until(marker)]


def _triple(packet: Packet) -> tuple[str, float, str]:
    return (packet.name, packet.number, packet.type)


# --- steps ------------------------------------------------------------------------------


def test_a_successful_step_is_counted_and_timed(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    assert sent(metrics, listener, message(step_succeeded(Step.DEPLOY))) == [
        ("drover.prod.checkout.step.deploy.succeeded", 1, "c"),
        ("drover.prod.checkout.step.deploy", 1234.5, "ms"),
    ]


def test_a_failed_step_is_counted_and_not_timed(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    assert sent(metrics, listener, message(step_failed(Step.VERIFY))) == [
        ("drover.prod.checkout.step.verify.failed", 1, "c"),
    ]


def test_rollback_steps_are_apart_from_the_deploy_steps(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    messages = [
        message(step_succeeded(Step.DEPLOY, rollback=True)),
        message(step_failed(Step.UNDRAIN, rollback=True)),
    ]
    assert sent(metrics, listener, *messages) == [
        ("drover.prod.checkout.step.rollback_deploy.succeeded", 1, "c"),
        ("drover.prod.checkout.step.rollback_deploy", 1234.5, "ms"),
        ("drover.prod.checkout.step.rollback_undrain.failed", 1, "c"),
    ]


def test_the_timer_value_is_sent_in_milliseconds_as_statsd_writes_it(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    metrics.record(message(step_succeeded()))
    timer = next(p for p in listener.wait_for(2) if p.type == "ms")
    assert timer == Packet("drover.prod.checkout.step.deploy", "1234.500000", "ms")


# --- components -------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "outcome"), COMPONENT_OUTCOMES)
def test_each_component_outcome_is_counted(
    metrics: StatsdMetrics, listener: StatsdListener, payload: Message, outcome: str
) -> None:
    assert sent(metrics, listener, message(payload)) == [
        (f"drover.prod.checkout.component.{outcome}", 1, "c"),
    ]


@pytest.mark.parametrize(("payload", "outcome"), COMPONENT_OUTCOMES)
def test_a_component_is_timed_from_its_start_to_its_outcome(
    metrics: StatsdMetrics, listener: StatsdListener, payload: Message, outcome: str
) -> None:
    packets = sent(metrics, listener, message(started(), at_s=10), message(payload, at_s=95.25))
    assert packets[0] == (f"drover.prod.checkout.component.{outcome}", 1, "c")
    name, value, kind = packets[1]
    assert (name, kind) == (f"drover.prod.checkout.component.duration.{outcome}", "ms")
    assert value == pytest.approx(85_250)
    assert len(packets) == 2


def test_a_component_is_timed_once_and_a_later_outcome_only_counted(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    deployed, rolled_back = COMPONENT_OUTCOMES[0][0], COMPONENT_OUTCOMES[2][0]
    packets = sent(
        metrics,
        listener,
        message(started(), at_s=0),
        message(deployed, at_s=60),
        message(rolled_back, at_s=120),
    )
    assert [name for name, _, _ in packets] == [
        "drover.prod.checkout.component.deployed",
        "drover.prod.checkout.component.duration.deployed",
        "drover.prod.checkout.component.rolled_back",
    ]


def test_components_of_different_releases_are_timed_apart(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    deployed = COMPONENT_OUTCOMES[0][0]
    packets = sent(
        metrics,
        listener,
        message(started(), at_s=0, release_id="R-1"),
        message(started(), at_s=50, release_id="R-2"),
        message(deployed, at_s=60, release_id="R-1"),
        message(deployed, at_s=60, release_id="R-2"),
    )
    timers = [value for _, value, kind in packets if kind == "ms"]
    assert timers == [pytest.approx(60_000), pytest.approx(10_000)]


# --- releases ---------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "outcome"), RELEASE_OUTCOMES)
def test_a_release_outcome_carries_the_environment_it_was_accepted_for(
    metrics: StatsdMetrics, listener: StatsdListener, payload: Message, outcome: str
) -> None:
    packets = sent(
        metrics, listener, message(accepted("staging"), at_s=0), message(payload, at_s=754.5)
    )
    assert packets == [
        (f"drover.staging.release.{outcome}", 1, "c"),
        (f"drover.staging.release.duration.{outcome}", pytest.approx(754_500), "ms"),
    ]


def test_a_release_this_process_never_saw_accepted_is_counted_as_unknown(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    rejected = ReleaseRejected(problems=(Problem(path="environment", reason="no such"),))
    assert sent(metrics, listener, message(rejected)) == [
        (f"drover.{UNKNOWN_ENVIRONMENT}.release.rejected", 1, "c"),
    ]


def test_a_retried_release_is_timed_from_its_retry_and_keeps_its_environment(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    packets = sent(
        metrics,
        listener,
        message(accepted("staging"), at_s=0),
        message(ReleaseRolledBack(reason="gate"), at_s=100),
        message(ReleaseRetried(attempt=2, components=(SERVICE,)), at_s=500),
        message(ReleaseSucceeded(), at_s=530),
    )
    assert packets == [
        ("drover.staging.release.rolled_back", 1, "c"),
        ("drover.staging.release.duration.rolled_back", pytest.approx(100_000), "ms"),
        ("drover.staging.release.succeeded", 1, "c"),
        ("drover.staging.release.duration.succeeded", pytest.approx(30_000), "ms"),
    ]


def test_what_is_remembered_is_bounded_and_the_oldest_is_forgotten(
    listener: StatsdListener,
) -> None:
    metrics = StatsdMetrics("127.0.0.1", listener.port, capacity=2)
    try:
        packets = sent(
            metrics,
            listener,
            message(accepted("env-1"), release_id="R-1"),
            message(accepted("env-2"), release_id="R-2"),
            message(accepted("env-3"), release_id="R-3"),
            message(ReleaseSucceeded(), at_s=1, release_id="R-1"),
            message(ReleaseSucceeded(), at_s=1, release_id="R-3"),
        )
    finally:
        metrics.close()
    assert [name for name, _, _ in packets] == [
        "drover.unknown.release.succeeded",  # R-1, forgotten: no environment, no timer
        "drover.env-3.release.succeeded",
        "drover.env-3.release.duration.succeeded",
    ]


# --- gates, drains, queues --------------------------------------------------------------


def test_a_gate_gauges_its_value_and_counts_its_verdict(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    packets = sent(metrics, listener, message(gate("fail", value=0.75, baseline=0.1)))
    assert packets == [
        ("drover.prod.checkout.gate.error-rate.value", 0.75, "g"),
        ("drover.prod.checkout.gate.error-rate.fail", 1, "c"),
    ]


@pytest.mark.parametrize("inputs", [{}, {"value": None}, {"other": 3.0}, {"value": float("nan")}])
def test_a_gate_without_a_numeric_value_only_counts_its_verdict(
    metrics: StatsdMetrics, listener: StatsdListener, inputs: dict[str, Any]
) -> None:
    assert sent(metrics, listener, message(gate("inconclusive", **inputs))) == [
        ("drover.prod.checkout.gate.error-rate.inconclusive", 1, "c"),
    ]


def test_a_negative_gate_value_ends_as_that_value(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    # StatsD reads "-3|g" as "lower by 3": the client first sets 0, in the same datagram.
    packets = sent(metrics, listener, message(gate("pass", value=-3)))
    assert packets == [
        ("drover.prod.checkout.gate.error-rate.value", 0, "g"),
        ("drover.prod.checkout.gate.error-rate.value", -3, "g"),
        ("drover.prod.checkout.gate.error-rate.pass", 1, "c"),
    ]


def test_a_drain_is_timed(metrics: StatsdMetrics, listener: StatsdListener) -> None:
    drained = HostDrained(
        environment=ENV,
        service=SERVICE,
        host="h1.example.com",
        waited_ms=2500,
        in_flight_left=0,
        timed_out=False,
    )
    assert sent(metrics, listener, message(drained)) == [
        ("drover.prod.checkout.drain", 2500, "ms"),
    ]


def test_queue_depths_are_gauged_and_a_missing_reading_left_out(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    metrics.queue_depth("drover.svc.checkout", ready=7, in_flight=2, oldest_age_s=12.5)
    metrics.queue_depth("drover.commands", ready=0, in_flight=None, oldest_age_s=None)
    assert _until_marker(metrics, listener, "drover") == [
        ("drover.queue.drover_svc_checkout.ready", 7, "g"),
        ("drover.queue.drover_svc_checkout.in_flight", 2, "g"),
        ("drover.queue.drover_svc_checkout.oldest_age_s", 12.5, "g"),
        ("drover.queue.drover_commands.ready", 0, "g"),
    ]


# --- what is not sent -------------------------------------------------------------------


def test_commands_and_unmeasured_events_send_nothing(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    assert sent(metrics, listener, message(StartRelease()), message(started())) == []


def test_a_message_recorded_twice_counts_once(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    once = message(step_failed())
    assert sent(metrics, listener, once, once) == [
        ("drover.prod.checkout.step.verify.failed", 1, "c"),
    ]


def test_no_release_id_or_message_id_is_ever_in_a_metric(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    release_id = "Zz9-Plural.Z-Alpha"
    payloads: list[Message] = [
        accepted(),
        started(),
        step_succeeded(),
        step_failed(),
        gate("pass", value=1.0),
        COMPONENT_OUTCOMES[0][0],
        ReleaseSucceeded(),
    ]
    messages = [
        message(p, at_s=i, release_id=release_id, message_id=f"msg-{i}-qx7")
        for i, p in enumerate(payloads)
    ]
    assert len(sent(metrics, listener, *messages)) == 9
    wire = b"\n".join(listener.datagrams).decode().lower()
    for forbidden in [release_id, sanitise(release_id), "r-1", *(m.id for m in messages)]:
        assert forbidden.lower() not in wire


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("checkout", "checkout"),
        ("a.b", "a_b"),
        ("Check Out", "check_out"),
        ("UPPER-case_9", "upper-case_9"),
        ("crème brûlée", "cr_me_br_l_e"),
        ("日本", "__"),
        ("name:1|c", "name_1_c"),
        ("a\nb", "a_b"),
        ("", "_"),
    ],
)
def test_a_segment_is_sanitised_to_lower_case_letters_digits_dash_and_underscore(
    segment: str, expected: str
) -> None:
    assert sanitise(segment) == expected


def test_a_name_has_dots_only_between_its_segments() -> None:
    assert metric_name("Prod", "a.b", "", "x y") == "prod.a_b._.x_y"


def test_the_prefix_leads_every_name_and_is_sanitised(listener: StatsdListener) -> None:
    metrics = StatsdMetrics("127.0.0.1", listener.port, prefix="Acme Corp..Drover")
    try:
        packets = sent(metrics, listener, message(step_failed()), prefix="acme_corp.drover")
    finally:
        metrics.close()
    assert packets == [("acme_corp.drover.prod.checkout.step.verify.failed", 1, "c")]


def test_an_empty_prefix_leaves_names_bare(listener: StatsdListener) -> None:
    metrics = StatsdMetrics("127.0.0.1", listener.port, prefix="")
    try:
        packets = sent(metrics, listener, message(step_failed()), prefix="")
    finally:
        metrics.close()
    assert packets == [("prod.checkout.step.verify.failed", 1, "c")]


# --- when metrics are off or away -------------------------------------------------------


@pytest.mark.parametrize("host", [None, "", "  "])
def test_no_host_means_no_metrics(host: str | None) -> None:
    assert isinstance(create_metrics(host, 8125, "drover"), NoMetrics)


def test_no_metrics_sends_nothing(listener: StatsdListener) -> None:
    silent = create_metrics(None)
    payloads: list[Message] = [accepted(), started(), step_succeeded(), COMPONENT_OUTCOMES[0][0]]
    for payload in payloads:
        silent.record(message(payload))
    silent.queue_depth("drover.commands", ready=1, in_flight=1, oldest_age_s=1.0)
    silent.close()
    # A real client's marker arrives after anything the silent one could have sent.
    metrics = StatsdMetrics("127.0.0.1", listener.port)
    try:
        assert _until_marker(metrics, listener, "drover") == []
    finally:
        metrics.close()
    assert len(listener.datagrams) == 1


def test_create_metrics_with_a_host_sends_to_it(listener: StatsdListener) -> None:
    metrics = create_metrics(" 127.0.0.1 ", listener.port, "drover")
    try:
        metrics.record(message(step_failed()))
        packets = listener.wait_for(1)
    finally:
        metrics.close()
    assert [p.name for p in packets] == ["drover.prod.checkout.step.verify.failed"]


def test_a_listener_that_is_gone_does_not_fail_the_caller() -> None:
    with StatsdListener() as gone:
        port = gone.port
    metrics = StatsdMetrics("127.0.0.1", port)
    try:
        for i in range(50):
            metrics.record(message(step_succeeded(), message_id=f"m-{i}"))
            metrics.queue_depth("drover.commands", ready=i, in_flight=None, oldest_age_s=None)
    finally:
        metrics.close()


def test_recording_after_close_does_nothing_and_does_not_raise(
    metrics: StatsdMetrics, listener: StatsdListener
) -> None:
    metrics.close()
    metrics.record(message(step_failed()))
    metrics.queue_depth("drover.commands", ready=1, in_flight=None, oldest_age_s=None)
    assert listener.datagrams == []


def test_a_port_out_of_range_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="70000"):
        StatsdMetrics("127.0.0.1", 70_000)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unresolvable_host_is_logged_at_most_once_a_minute_and_never_raised() -> None:
    clock = _Clock()
    with capture_logs() as logs:
        # ".invalid" never resolves (RFC 6761), and resolving it needs no server.
        metrics = StatsdMetrics("statsd.invalid", 8125, clock=clock)
        for second in range(1, 60):
            clock.now = 1000 + second
            metrics.record(message(step_succeeded(), message_id=f"m-{second}"))
        assert len(logs) == 1
        clock.now = 1061
        metrics.record(message(step_succeeded(), message_id="m-61"))
        metrics.close()
    assert [entry["event"] for entry in logs] == ["statsd metrics not sent"] * 2
    assert logs[0]["log_level"] == "warning"
    assert "gaierror" in logs[0]["error"]
    assert [entry["suppressed"] for entry in logs] == [0, 59]
