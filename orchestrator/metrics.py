"""StatsD metrics: what Drover's messages say about deploys, as counters, timers and gauges.

Every process hands each event it publishes to :meth:`Metrics.record`, and the queue
depths it reads to :meth:`Metrics.queue_depth`. A process with no StatsD host configured
gets :class:`NoMetrics`, so callers never check whether metrics are on.

Names are ``<prefix>.<environment>.<service>.…`` (the prefix is ``drover`` unless
configured), built only from names the contract already holds to strict patterns (and
sanitised again here): never a release id or a message id, which would make a new
series per release and swamp the metrics store.

StatsD is fire-and-forget UDP, and metrics must never fail a deploy: nothing here raises
into its caller. Failures are logged, at most once a minute.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Generic, Literal, Protocol, TypeVar

import statsd

from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    Envelope,
    GateJudged,
    HostDrained,
    ReleaseAccepted,
    ReleaseFailed,
    ReleaseRejected,
    ReleaseRetried,
    ReleaseRolledBack,
    ReleaseSucceeded,
    StepFailed,
    StepSucceeded,
)
from orchestrator.observability import get_logger

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "UNKNOWN_ENVIRONMENT",
    "Metrics",
    "NoMetrics",
    "StatsdMetrics",
    "create_metrics",
    "metric_name",
    "sanitise",
]

log = get_logger(__name__)

DEFAULT_PORT: Final = 8125
DEFAULT_PREFIX: Final = "drover"
UNKNOWN_ENVIRONMENT: Final = "unknown"  # a release whose ReleaseAccepted this process missed

# How many releases, components and message ids are remembered (each): enough for every
# release in flight, while a process that runs for months still holds a bounded amount.
_REMEMBERED: Final = 10_000
_COMPLAIN_EVERY_S: Final = 60.0
_UNSAFE: Final = re.compile(r"[^a-z0-9_-]")

_ComponentOutcome = (
    ComponentDeployed | ComponentFailed | ComponentRolledBack | ComponentRollbackFailed
)
_ReleaseOutcome = ReleaseSucceeded | ReleaseRolledBack | ReleaseFailed | ReleaseRejected

_COMPONENT_OUTCOMES: Final[dict[type[_ComponentOutcome], str]] = {
    ComponentDeployed: "deployed",
    ComponentFailed: "failed",
    ComponentRolledBack: "rolled_back",
    ComponentRollbackFailed: "rollback_failed",
}
_RELEASE_OUTCOMES: Final[dict[type[_ReleaseOutcome], str]] = {
    ReleaseSucceeded: "succeeded",
    ReleaseRolledBack: "rolled_back",
    ReleaseFailed: "failed",
    ReleaseRejected: "rejected",
}


# --- names ------------------------------------------------------------------------------


def sanitise(segment: str) -> str:
    """One segment of a metric name: lower case, and only ``[a-z0-9_-]``.

    StatsD reads ``:`` and ``|`` as syntax and Graphite reads ``.`` as a level, so
    anything else becomes ``_``; an empty segment too, so no name ever has ``..``.
    """
    return _UNSAFE.sub("_", segment.lower()) or "_"


def metric_name(*segments: str) -> str:
    """Segments, each sanitised, joined by dots: the only dots a name has."""
    return ".".join(sanitise(segment) for segment in segments)


def _sanitised_prefix(prefix: str) -> str | None:
    # A prefix may have levels of its own ("acme.drover"); blank levels are dropped.
    levels = [sanitise(level) for level in prefix.split(".") if level.strip()]
    return ".".join(levels) or None


# --- what is sent -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One metric to send; ``name`` is without the prefix, which the client adds."""

    kind: Literal["counter", "timer", "gauge"]
    name: str
    value: float


def _counter(*segments: str) -> Sample:
    return Sample("counter", metric_name(*segments), 1)


def _elapsed_ms(start: datetime | None, end: datetime) -> float | None:
    """Milliseconds from ``start`` to ``end``; None when there is no sensible answer."""
    if start is None or (start.tzinfo is None) != (end.tzinfo is None):
        return None  # naive and aware times cannot be subtracted
    elapsed = (end - start).total_seconds() * 1000
    return elapsed if elapsed >= 0 else None  # clocks apart: no timing beats a wrong one


def _is_number(value: object) -> bool:
    # bool is an int to Python but not a reading; NaN and infinity are not gauge values.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _step_samples(payload: StepSucceeded | StepFailed) -> list[Sample]:
    step = f"rollback_{payload.step.value}" if payload.rollback else payload.step.value
    base = (payload.environment, payload.service, "step", step)
    if isinstance(payload, StepFailed):
        return [_counter(*base, "failed")]  # a failed step reports no duration
    return [_counter(*base, "succeeded"), Sample("timer", metric_name(*base), payload.duration_ms)]


def _gate_samples(payload: GateJudged) -> list[Sample]:
    base = (payload.environment, payload.service, "gate", payload.gate)
    samples = []
    value = payload.inputs.get("value")
    if value is not None and _is_number(value):
        samples.append(Sample("gauge", metric_name(*base, "value"), value))
    samples.append(_counter(*base, payload.verdict))
    return samples


def _drain_samples(payload: HostDrained) -> list[Sample]:
    name = metric_name(payload.environment, payload.service, "drain")
    return [Sample("timer", name, payload.waited_ms)]


def _queue_samples(
    queue: str, ready: int | None, in_flight: int | None, oldest_age_s: float | None
) -> list[Sample]:
    """Gauges of one queue's depth; a reading the broker cannot give is left out."""
    readings = {"ready": ready, "in_flight": in_flight, "oldest_age_s": oldest_age_s}
    return [
        Sample("gauge", metric_name("queue", queue, reading), value)
        for reading, value in readings.items()
        if value is not None
    ]


# --- what later messages need to know ---------------------------------------------------

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Bounded(Generic[_K, _V]):
    """A map that forgets its oldest entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._capacity = capacity

    def put(self, key: _K, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def get(self, key: _K) -> _V | None:
        return self._items.get(key)

    def pop(self, key: _K) -> _V | None:
        return self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class _Ledger:
    """Turns events into samples, remembering what a later event needs.

    Release outcomes carry no environment, and timers need their start: both are learned
    from earlier events, and kept in bounded maps. Not thread-safe: the caller locks.
    """

    def __init__(self, capacity: int) -> None:
        self._environments: _Bounded[str, str] = _Bounded(capacity)  # release id -> env
        self._release_started: _Bounded[str, datetime] = _Bounded(capacity)
        self._component_started: _Bounded[tuple[str, str], datetime] = _Bounded(capacity)
        # A message recorded twice (a re-publish after a crash, a drill's duplicate, a
        # process that records what it both publishes and handles) counts once.
        self._seen: _Bounded[str, None] = _Bounded(capacity)

    def samples(self, message: Envelope) -> list[Sample]:
        if message.is_command or message.id in self._seen:
            return []
        self._seen.put(message.id, None)
        return self._translate(message)

    def _translate(self, message: Envelope) -> list[Sample]:
        payload = message.payload
        match payload:
            case StepSucceeded() | StepFailed():
                return _step_samples(payload)
            case ComponentStarted():
                key = (message.release_id, payload.service)
                self._component_started.put(key, message.occurred_at)  # a retry starts anew
                return []
            case (
                ComponentDeployed()
                | ComponentFailed()
                | ComponentRolledBack()
                | ComponentRollbackFailed()
            ):
                return self._component_outcome(message, payload)
            case ReleaseAccepted():
                self._environments.put(message.release_id, payload.environment)
                self._release_started.put(message.release_id, message.occurred_at)
                return []
            case ReleaseRetried():
                self._release_started.put(message.release_id, message.occurred_at)
                return []
            case ReleaseSucceeded() | ReleaseRolledBack() | ReleaseFailed() | ReleaseRejected():
                return self._release_outcome(message, payload)
            case GateJudged():
                return _gate_samples(payload)
            case HostDrained():
                return _drain_samples(payload)
            case _:
                return []

    def _component_outcome(self, message: Envelope, payload: _ComponentOutcome) -> list[Sample]:
        outcome = _COMPONENT_OUTCOMES[type(payload)]
        base = (payload.environment, payload.service, "component")
        samples = [_counter(*base, outcome)]
        started = self._component_started.pop((message.release_id, payload.service))
        elapsed = _elapsed_ms(started, message.occurred_at)
        if elapsed is not None:
            samples.append(Sample("timer", metric_name(*base, "duration", outcome), elapsed))
        return samples

    def _release_outcome(self, message: Envelope, payload: _ReleaseOutcome) -> list[Sample]:
        outcome = _RELEASE_OUTCOMES[type(payload)]
        # The environment is kept after the release ends: a retried release ends again.
        environment = self._environments.get(message.release_id) or UNKNOWN_ENVIRONMENT
        samples = [_counter(environment, "release", outcome)]
        started = self._release_started.pop(message.release_id)
        elapsed = _elapsed_ms(started, message.occurred_at)
        if elapsed is not None:
            samples.append(
                Sample("timer", metric_name(environment, "release", "duration", outcome), elapsed)
            )
        return samples


# --- where it goes ----------------------------------------------------------------------


class Metrics(Protocol):
    """What the coordinator and workers call; :func:`create_metrics` gives one."""

    def record(self, message: Envelope) -> None:
        """Count, time or gauge what one event says; other messages are ignored."""
        ...

    def queue_depth(
        self, queue: str, ready: int | None, in_flight: int | None, oldest_age_s: float | None
    ) -> None:
        """Gauge one queue's depth; None for a reading the broker cannot give."""
        ...

    def close(self) -> None: ...


class NoMetrics:
    """What a process has when no StatsD host is configured: every call does nothing."""

    def record(self, message: Envelope) -> None:
        pass

    def queue_depth(
        self, queue: str, ready: int | None, in_flight: int | None, oldest_age_s: float | None
    ) -> None:
        pass

    def close(self) -> None:
        pass


class _StatsClient(Protocol):
    """The part of ``statsd.StatsClient`` used here (the package ships no types)."""

    def incr(self, stat: str, count: int = 1) -> None: ...
    def timing(self, stat: str, delta: float) -> None: ...
    def gauge(self, stat: str, value: float) -> None: ...
    def close(self) -> None: ...


def _emit(client: _StatsClient, sample: Sample) -> None:
    if sample.kind == "counter":
        client.incr(sample.name, int(sample.value))
    elif sample.kind == "timer":
        client.timing(sample.name, sample.value)
    else:
        client.gauge(sample.name, sample.value)


class _Complaints:
    """Metrics failures, logged at most once a minute: an outage must not flood the log."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._quiet_until: float | None = None
        self._suppressed = 0

    def add(self, error: BaseException) -> None:
        with self._lock:
            now = self._clock()
            if self._quiet_until is not None and now < self._quiet_until:
                self._suppressed += 1
                return
            self._quiet_until = now + _COMPLAIN_EVERY_S
            suppressed, self._suppressed = self._suppressed, 0
        log.warning("statsd metrics not sent", error=repr(error), suppressed=suppressed)


class StatsdMetrics:
    """Metrics sent over UDP to a StatsD server by the ``statsd`` package's client.

    Safe to share by threads. The host is resolved when this is made; if it cannot be,
    samples are dropped and the host is tried again at most once a minute, so a DNS
    outage neither fails a deploy nor slows every message down with a lookup.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        prefix: str = DEFAULT_PREFIX,
        *,
        capacity: int = _REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < port < 65_536:
            # getaddrinfo would silently wrap it round to another port.
            raise ValueError(f"StatsD port {port} is not 1-65535")
        self._host = host
        self._port = port
        self._prefix = _sanitised_prefix(prefix)
        self._clock = clock
        self._ledger = _Ledger(capacity)
        self._ledger_lock = threading.Lock()
        self._complaints = _Complaints(clock)
        self._client_lock = threading.Lock()
        self._client: _StatsClient | None = None
        self._connect_error: BaseException | None = None
        self._retry_at = clock()
        self._closed = False
        self._client_or_complain()  # resolve now: a bad host is logged at start

    def record(self, message: Envelope) -> None:
        try:
            with self._ledger_lock:
                samples = self._ledger.samples(message)
            self._send(samples)
        except Exception as error:  # whatever went wrong, the deploy goes on
            self._complaints.add(error)

    def queue_depth(
        self, queue: str, ready: int | None, in_flight: int | None, oldest_age_s: float | None
    ) -> None:
        try:
            self._send(_queue_samples(queue, ready, in_flight, oldest_age_s))
        except Exception as error:
            self._complaints.add(error)

    def close(self) -> None:
        with self._client_lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
            self._client = None

    def _send(self, samples: list[Sample]) -> None:
        if not samples:
            return
        client = self._client_or_complain()
        if client is None:
            return
        for sample in samples:
            _emit(client, sample)

    def _client_or_complain(self) -> _StatsClient | None:
        client = self._connected()
        if client is None and self._connect_error is not None:
            # Logged once a minute; the samples dropped meanwhile are counted as suppressed.
            self._complaints.add(self._connect_error)
        return client

    def _connected(self) -> _StatsClient | None:
        with self._client_lock:
            if self._client is None and not self._closed and self._clock() >= self._retry_at:
                self._retry_at = self._clock() + _COMPLAIN_EVERY_S
                self._client = self._connect()
            return self._client

    def _connect(self) -> _StatsClient | None:
        try:
            client: _StatsClient = statsd.StatsClient(
                self._host, self._port, prefix=self._prefix, ipv6=":" in self._host
            )
        except (OSError, UnicodeError) as error:  # gaierror, or a name IDNA cannot encode
            self._connect_error = error
            return None
        self._connect_error = None
        return client


def create_metrics(
    host: str | None, port: int = DEFAULT_PORT, prefix: str = DEFAULT_PREFIX
) -> Metrics:
    """StatsD metrics to ``host``, or :class:`NoMetrics` when no host is configured."""
    if host is None or not host.strip():
        return NoMetrics()
    return StatsdMetrics(host.strip(), port, prefix)
