# kombu ships only partial annotations (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-untyped-calls=False
"""Drover as real processes for a benchmark: the files they read, the processes, a client
beside them, and what a release took, read from its timeline.

The same approach as the end-to-end tests (``python -m orchestrator coordinator|worker``
with ``DROVER_*`` variables, one fresh namespace per cluster, everything it left on the
brokers removed afterwards), written again here because ``bench`` must not import from
``tests``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import redis
from kombu.connection import Connection

from bench.options import Options
from orchestrator.client import Client
from orchestrator.contract import Envelope, SubmitRelease
from orchestrator.fleet import Fleet
from orchestrator.plans import load_fleet, load_release
from orchestrator.runtime import Parts, connect
from orchestrator.saga import ReleaseStatus
from orchestrator.settings import Settings

__all__ = [
    "ENVIRONMENT",
    "WARMUP_SERVICE",
    "Cluster",
    "cluster",
    "env_sizes",
    "fresh_namespace",
    "release_seconds",
    "service_names",
    "span_seconds",
    "wait_until_ended",
    "write_fleet",
    "write_release",
]

ENVIRONMENT: Final = "bench"
# A one-host service every benchmark fleet has: a release of it proves the coordinator
# and the worker are both consuming before the clock starts on the measured release.
WARMUP_SERVICE: Final = "warmup"
INITIAL_VERSION: Final = "1.0.0"
_TERMINAL_EVENTS: Final = {
    "ReleaseSucceeded",
    "ReleaseRolledBack",
    "ReleaseFailed",
    "ReleaseRejected",
}
_STOP_WAIT_S: Final = 15.0


# --- files ---------------------------------------------------------------------------------


def service_names(count: int, prefix: str = "svc") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


def write_fleet(
    folder: Path,
    hosts_per_service: Mapping[str, int],
    batch: int,
    timeouts: Mapping[str, float] | None = None,
) -> Path:
    """One environment of simulated services with zero latency, rolling ``batch`` at a time.

    ``timeouts`` (``step_timeout_s``, ``component_timeout_s``) go to every measured
    service; the fleet file's defaults otherwise. Written as JSON, which is YAML: a
    20,000-host file is dumped in milliseconds.
    """
    services: dict[str, Any] = {
        name: {**_service(name, count, batch), **(timeouts or {})}
        for name, count in hosts_per_service.items()
    }
    services[WARMUP_SERVICE] = _service(WARMUP_SERVICE, 1, 1)
    path = folder / "fleet.yaml"
    path.write_text(json.dumps({"environments": {ENVIRONMENT: {"services": services}}}))
    return path


def _service(name: str, hosts: int, batch: int) -> dict[str, Any]:
    return {
        "hosts": [f"{name}-h{i:03d}" for i in range(hosts)],
        "strategy": {"kind": "rolling", "batch": batch},
        "driver": {"kind": "simulated", "initial_version": INITIAL_VERSION, "latency_ms": 0},
    }


def write_release(folder: Path, name: str, services: Sequence[str], version: str) -> Path:
    """A release file moving ``services`` to ``version``, independent of each other."""
    release = {
        "environment": ENVIRONMENT,
        "reason": f"bench {name}",
        "components": [{"service": s, "version": version} for s in services],
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(release))
    return path


def env_sizes(variable: str, default: Sequence[int]) -> list[int]:
    """Sizes from an environment variable such as ``BENCH_P3_HOSTS=5000,10000``."""
    raw = os.environ.get(variable, "")
    return [int(part) for part in raw.split(",") if part.strip()] if raw else list(default)


def fresh_namespace(tag: str) -> str:
    # DROVER_NAMESPACE allows ^[a-z][a-z0-9-]{0,40}$.
    return f"bench-{tag}-{uuid.uuid4().hex[:10]}"


# --- processes -----------------------------------------------------------------------------


@dataclass
class Cluster:
    """One namespace's coordinator and workers, a client beside them, and their logs."""

    namespace: str
    env: dict[str, str]
    folder: Path
    fleet: Fleet
    parts: Parts
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def client(self) -> Client:
        return Client(self.parts.store, self.parts.bus)

    def start(self, name: str, *args: str) -> None:
        with (self.folder / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def peak_memory_mb(self, name: str) -> float:
        """The process's resident high-water mark (VmHWM), in MiB."""
        status = Path(f"/proc/{self.processes[name].pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # the kernel says kB

    def assert_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def submit(self, paths: Sequence[Path]) -> list[str]:
        """Submit a release per file, one right after the other; their ids, in order."""
        # Every file is read before the first is sent, so that the submissions go out
        # together and reading YAML stays outside the measured time.
        requests = [load_release(path) for path in paths]
        client = self.client
        return [client.submit(request, actor="bench") for request in requests]

    def warm_up(self, timeout_s: float = 120) -> None:
        """Run the one-host warm-up release: both roles are consuming once it has ended."""
        request = SubmitRelease.model_validate(
            {
                "environment": ENVIRONMENT,
                "components": [{"service": WARMUP_SERVICE, "version": "0.0.1"}],
            }
        )
        release_id = self.client.submit(request, actor="bench-warmup")
        wait_until_ended(self, [release_id], timeout_s)

    def worker_pids(self) -> list[int]:
        return [p.pid for name, p in self.processes.items() if name.startswith("worker")]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def cluster(
    options: Options,
    tag: str,
    hosts_per_service: Mapping[str, int],
    *,
    batch: int,
    timeouts: Mapping[str, float] | None = None,
    workers: int = 1,
    log_level: str = "info",
) -> Iterator[Cluster]:
    """A coordinator and ``workers`` worker processes (``--service all``) on a fleet of
    ``hosts_per_service``, warmed up; stopped and forgotten afterwards.

    ``log_level`` is Drover's default, ``info``: its logging is part of what it costs.
    The worker runs Drover's default concurrency (4 threads).
    """
    namespace = fresh_namespace(tag)
    with tempfile.TemporaryDirectory(prefix=f"{namespace}-") as scratch:
        folder = Path(scratch)
        fleet_path = write_fleet(folder, hosts_per_service, batch, timeouts)
        fleet = load_fleet(fleet_path)
        parts = connect(_settings(options, namespace, fleet_path), fleet)
        env = _process_env(options, namespace, fleet_path, log_level)
        running = Cluster(namespace, env, folder, fleet, parts)
        try:
            # The coordinator declares its queues as it starts; declaring them here too
            # means a submission made before it is up waits in its queue instead of
            # being dropped by an exchange with nothing bound to it.
            parts.bus.declare()
            running.start("coordinator", "coordinator")
            for index in range(workers):
                running.start(f"worker-{index}", "worker", "--service", "all")
            running.warm_up()
            yield running
        finally:
            running.stop()
            parts.close()
            forget(options, namespace, fleet.service_names(), running.worker_pids())


def _settings(options: Options, namespace: str, fleet_path: Path) -> Settings:
    return Settings(
        broker_url=options.broker_url,
        store_url=options.redis_url,
        namespace=namespace,
        fleet=fleet_path,
        log_level="warning",
    )


def _process_env(
    options: Options, namespace: str, fleet_path: Path, log_level: str
) -> dict[str, str]:
    # Only our DROVER_* variables: one left in the caller's environment could point a
    # process at another broker or store.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env |= {
        "DROVER_BROKER_URL": options.broker_url,
        "DROVER_STORE_URL": options.redis_url,
        "DROVER_FLEET": str(fleet_path),
        "DROVER_NAMESPACE": namespace,
        "DROVER_LOG_FORMAT": "json",
        "DROVER_LOG_LEVEL": log_level,
    }
    return env


def forget(
    options: Options, namespace: str, services: Sequence[str], worker_pids: Sequence[int] = ()
) -> None:
    """Remove what a cluster left behind: store keys, kombu's Redis keys, RabbitMQ entities."""
    client = redis.Redis.from_url(options.redis_url)
    try:
        # The store's keys and kombu's queue lists start with the namespace; kombu keeps
        # each exchange's bindings under a key of its own, with the namespace inside.
        for prefix in ("", "_kombu.binding.", "_kombu.binding_permanent."):
            _delete_matching(client, f"{prefix}{namespace}*")
        if options.broker == "redis":
            _forget_pidboxes(client, worker_pids)
    finally:
        client.close()
    if options.broker == "rabbitmq":
        _forget_rabbitmq(options.amqp_url, namespace, services)


def _forget_pidboxes(client: redis.Redis, worker_pids: Sequence[int]) -> None:
    # Celery's remote-control queue of each worker is bound in one set shared by every
    # Celery on this Redis, and is never unbound; the worker is named after its pid.
    key = "_kombu.binding.celery.pidbox"
    names = tuple(f"drover-{pid}@".encode() for pid in worker_pids)
    ours = [m for m in client.smembers(key) if any(name in m for name in names)]
    if ours:
        client.srem(key, *ours)


def _delete_matching(client: redis.Redis, pattern: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def _forget_rabbitmq(amqp_url: str, namespace: str, services: Sequence[str]) -> None:
    queues = ["commands", "coordinator", "default", *(f"svc.{s}" for s in services)]
    exchanges = ["commands", "events", "default", *(f"svc.{s}" for s in services)]
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(f"{namespace}.{queue}")
        for exchange in exchanges:
            channel.exchange_delete(f"{namespace}.{exchange}")
        channel.close()


# --- what a release took --------------------------------------------------------------------


def wait_until_ended(
    running: Cluster, release_ids: Sequence[str], timeout_s: float, poll_s: float = 0.5
) -> None:
    """Return once every release has ended; raise if one did not succeed or time ran out.

    Polls the store, one release at a time: all of them must end, so waiting for each in
    turn costs one load per look however many there are, and the looking takes little
    CPU from Drover on a small machine. The figures come from the timeline afterwards,
    so how often we look changes nothing else.
    """
    deadline = time.monotonic() + timeout_s
    for release_id in release_ids:
        while (state := running.client.state(release_id)) is None or not state.status.is_terminal:
            running.assert_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release_id} has not ended after {timeout_s:.0f} s")
            time.sleep(poll_s)
        if state.status is not ReleaseStatus.SUCCEEDED:
            raise RuntimeError(f"{release_id} ended {state.status}: {state.failure}")


def release_seconds(timeline: Sequence[Envelope]) -> float:
    """From the submission (the client's clock) to the end the coordinator committed."""
    start, end = _bounds(timeline)
    return (end - start).total_seconds()


def span_seconds(timelines: Sequence[Sequence[Envelope]]) -> float:
    """From the first submission to the last end, over several releases."""
    bounds = [_bounds(timeline) for timeline in timelines]
    return (max(e for _, e in bounds) - min(s for s, _ in bounds)).total_seconds()


def _bounds(timeline: Sequence[Envelope]) -> tuple[datetime, datetime]:
    # occurred_at is when a message was made: for the end event that is the moment the
    # coordinator decided the release was over, after working through any backlog.
    start = next(m.occurred_at for m in timeline if m.type == "SubmitRelease")
    end = max(m.occurred_at for m in timeline if m.type in _TERMINAL_EVENTS)
    return start, end
