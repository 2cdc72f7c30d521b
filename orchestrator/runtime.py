"""Composition roots: one per process role, and the embedded all-in-one.

Each function here builds one process from its settings and nothing else: the store,
the Celery app, the bus, and the role on top. Nothing in the core knows whether it runs
as separate processes over Redis or RabbitMQ, or as threads in one process over an
in-memory broker.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from celery import Celery
from celery.worker import WorkController
from celery.worker import state as worker_state

from orchestrator.bus import BrokerUnavailable, Bus, BusDrills, Topology
from orchestrator.coordinator import Coordinator
from orchestrator.drills import CrashPoints
from orchestrator.fleet import Fleet
from orchestrator.metrics import create_metrics
from orchestrator.observability import get_logger
from orchestrator.plans import load_fleet
from orchestrator.queues import queue_depths
from orchestrator.settings import Settings
from orchestrator.store import Store, open_store
from workers.app import create_celery
from workers.tasks import ComponentRunner, WorkerLimits, register_tasks

__all__ = [
    "Parts",
    "connect",
    "embedded",
    "open_bus",
    "run_coordinator",
    "run_worker",
    "warn_if_forgetful",
]

log = get_logger(__name__)

# Reading depths costs several broker round trips per queue: not every tick.
_QUEUE_GAUGE_EVERY_S = 15.0


@dataclass(frozen=True)
class Parts:
    """What every Drover process is built from."""

    settings: Settings
    fleet: Fleet
    store: Store
    celery: Celery
    bus: Bus

    def close(self) -> None:
        self.bus.close()
        self.celery.close()  # its own pool of broker connections, for sending tasks
        self.store.close()


class ConfigurationError(Exception):
    """The process cannot start with the configuration it was given."""


def connect(settings: Settings, fleet: Fleet | None = None) -> Parts:
    if fleet is None:
        if settings.fleet is None:
            raise ConfigurationError("no fleet file: set DROVER_FLEET or pass --fleet")
        fleet = load_fleet(settings.fleet)
    store = open_store(settings.store_url, namespace=settings.namespace)
    bus = open_bus(settings)
    return Parts(settings, fleet, store, bus.celery, bus)


def open_bus(settings: Settings) -> Bus:
    """The bus alone, for commands that only publish (abort, requeue)."""
    celery = create_celery(
        settings.broker_url, settings.namespace, settings.redis_visibility_timeout_s
    )
    return Bus(
        settings.broker_url,
        Topology(settings.namespace),
        celery,
        visibility_timeout_s=settings.redis_visibility_timeout_s,
        progress_every_s=settings.progress_feed_every_s,
        drills=BusDrills(
            copies=2 if settings.drill_duplicate_publishes else 1,
            reorder_events_ms=settings.drill_reorder_events_ms,
        ),
        metrics=create_metrics(settings.statsd_host, settings.statsd_port, settings.statsd_prefix),
    )


def warn_if_forgetful(store: Store) -> None:
    """Say so at start-up when the store could lose saga state."""
    for problem in store.durability_problems():
        log.warning("the store may lose data", problem=problem)


def run_coordinator(parts: Parts) -> None:
    """The ``coordinator`` process: runs until SIGTERM or SIGINT."""
    warn_if_forgetful(parts.store)
    stop = threading.Event()
    _stop_on_signals(stop)
    crash_points = CrashPoints.parse(parts.settings.crash_at)
    if parts.settings.statsd_host:
        threading.Thread(
            target=_gauge_queues, args=(parts, stop), name="drover-queue-gauges", daemon=True
        ).start()
    Coordinator(parts.store, parts.bus, parts.fleet, crash_points).run(stop)


def _gauge_queues(parts: Parts, stop: threading.Event) -> None:
    """Queue depths as StatsD gauges, from the coordinator, every so often until ``stop``."""
    while not stop.wait(_QUEUE_GAUGE_EVERY_S):
        try:
            for row in queue_depths(parts):
                parts.bus.metrics.queue_depth(
                    row["name"], row["ready"], row["unacked"], row["oldest_age_s"]
                )
        except BrokerUnavailable as exc:  # the next round tries again
            log.warning("queue depths unreadable for metrics", error=str(exc))


def run_worker(parts: Parts, services: Sequence[str]) -> None:
    """The ``worker`` process: a Celery worker on the queues of ``services``."""
    warn_if_forgetful(parts.store)
    queues = _prepare_worker(parts, services)
    worker = parts.celery.Worker(
        # Unique per process, so that several workers on one machine stay apart.
        hostname=f"drover-{os.getpid()}@{socket.gethostname()}",
        pool="threads",
        concurrency=parts.settings.worker_concurrency,
        queues=queues,
        loglevel=_library_log_level(parts.settings.log_level),
        without_mingle=True,
        without_gossip=True,
        quiet=True,
    )
    worker.start()


def _library_log_level(level: str) -> str:
    # Celery logs every task at INFO, outside Drover's log context; Drover's own lines
    # already say what each task did. Celery speaks at INFO only when debugging.
    return "DEBUG" if level == "debug" else "WARNING"


def _prepare_worker(parts: Parts, services: Sequence[str]) -> list[str]:
    unknown = sorted(set(services) - set(parts.fleet.service_names()))
    if unknown:
        raise ConfigurationError(f"--service: not in the fleet file: {', '.join(unknown)}")
    limits = WorkerLimits(
        lease_ttl_s=parts.settings.lease_ttl_s, delivery_limit=parts.settings.delivery_limit
    )
    crash_points = CrashPoints.parse(parts.settings.crash_at)
    runner = ComponentRunner(parts.fleet, parts.store, parts.bus, limits, crash_points)
    register_tasks(parts.celery, runner)
    queues = [parts.bus.topology.service_queue(s) for s in services]
    parts.celery.conf.task_queues = queues
    return [q.name for q in queues]


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class _EmbeddedWorker(WorkController):  # type: ignore[misc]
    """A Celery worker that runs in a thread and says when it is consuming."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.consuming = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.consuming.set()


@contextmanager
def embedded(parts: Parts) -> Iterator[Parts]:
    """Every role in this process, as threads, until the block ends."""
    stop = threading.Event()
    coordinator_ready = threading.Event()
    crash_points = CrashPoints.parse(parts.settings.crash_at)
    coordinator = Coordinator(parts.store, parts.bus, parts.fleet, crash_points)
    coordinator_thread = threading.Thread(
        target=coordinator.run,
        args=(stop, coordinator_ready.set),
        name="drover-coordinator",
        daemon=True,
    )
    queues = _prepare_worker(parts, parts.fleet.service_names())
    parts.celery.finalize()
    worker = _EmbeddedWorker(
        app=parts.celery,
        pool="threads",
        concurrency=parts.settings.worker_concurrency,
        queues=queues,
        hostname=f"drover-embedded@{socket.gethostname()}",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=_library_log_level(parts.settings.log_level),
    )
    worker_thread = threading.Thread(target=worker.start, name="drover-worker", daemon=True)
    worker_state.should_terminate = None  # a previous embedded run in this process set it
    coordinator_thread.start()
    worker_thread.start()
    coordinator_ready.wait(30)
    worker.consuming.wait(30)
    try:
        yield parts
    finally:
        stop.set()
        coordinator_thread.join(5)
        # Celery's worker looks at this flag (the mechanism of its own embedded test
        # worker) only between two-second waits for messages. Callers leave this block
        # once their releases have ended, so no task is in flight: the daemon thread is
        # told to stop and given a moment, not waited for.
        worker_state.should_terminate = 0
        worker_thread.join(0.2)
