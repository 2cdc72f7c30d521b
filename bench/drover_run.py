# kombu ships only partial annotations (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-untyped-calls=False
"""Drover as separate processes for one benchmark run, and what the run leaves behind.

A run writes a fleet of simulated services (one host each, no latency) and release files
into a temporary folder, starts a coordinator and one worker exactly as an operator
would (``python -m orchestrator coordinator|worker --service all`` with ``DROVER_*``
variables), submits releases from this process through :class:`~orchestrator.client.Client`,
and reads every figure from the store's timeline: the ``occurred_at`` each message was
given where it was made, so the benchmark's own polling never enters a figure.

Every run has a namespace of its own; its store keys, queues and exchanges are removed
afterwards, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import redis
import yaml
from kombu.connection import Connection

from bench.options import Options
from orchestrator.client import Client
from orchestrator.contract import Envelope
from orchestrator.plans import load_fleet, load_release, plan_release
from orchestrator.runtime import Parts, connect
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.settings import Settings

__all__ = [
    "ENVIRONMENT",
    "WORKER_CONCURRENCY",
    "DroverRun",
    "between",
    "chain",
    "drover_processes",
    "forget",
    "forget_keys",
    "independent",
    "service_names",
]

ENVIRONMENT: Final = "bench"
# Drover's own default (DROVER_WORKER_CONCURRENCY): the bare Celery worker a figure is
# compared with gets the same number of threads, so neither side has more slots.
WORKER_CONCURRENCY: Final = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "4"))
# Generous: a benchmark that stalls should fail with a reason, not hang the runner.
RELEASE_TIMEOUT_S: Final = float(os.environ.get("BENCH_RELEASE_TIMEOUT_S", "1800"))
_READY_TIMEOUT_S: Final = 120.0
_POLL_S: Final = 0.5  # reading a 1,000-component state costs the store; not more often

Component = tuple[str, tuple[str, ...]]  # service, the services it depends on


def service_names(count: int) -> list[str]:
    return [f"s{index:05d}" for index in range(count)]


def independent(count: int) -> list[Component]:
    return [(name, ()) for name in service_names(count)]


def chain(count: int) -> list[Component]:
    """Each component depends on the one before it."""
    names = service_names(count)
    return [(name, (names[i - 1],) if i else ()) for i, name in enumerate(names)]


def between(timeline: Sequence[Envelope], first: str, last: str) -> float:
    """Seconds from the first message of type ``first`` to the first of type ``last``."""
    return (_at(timeline, last) - _at(timeline, first)).total_seconds()


def _at(timeline: Sequence[Envelope], message_type: str) -> datetime:
    return next(m.occurred_at for m in timeline if m.type == message_type)


@dataclass
class DroverRun:
    """A running coordinator and worker on one namespace, and a client to talk to them."""

    options: Options
    namespace: str
    folder: Path
    parts: Parts
    processes: list[subprocess.Popen[bytes]]

    def release_file(self, components: Sequence[Component], version: str) -> Path:
        path = self.folder / f"release-{version}.yaml"
        release = {
            "environment": ENVIRONMENT,
            "reason": f"benchmark {version}",
            "components": [
                {"service": s, "version": version, "depends_on": list(d)} for s, d in components
            ],
        }
        path.write_text(yaml.safe_dump(release, sort_keys=False), encoding="utf-8")
        return path

    def run_release(self, path: Path, timeout_s: float = RELEASE_TIMEOUT_S) -> list[Envelope]:
        """Submit a release file, wait for it to succeed, and return its timeline."""
        request = load_release(path)
        plan_release(self.parts.fleet, request, source=str(path))  # as `drover release submit`
        release_id = Client(self.parts.store, self.parts.bus).submit(request, actor="bench")
        deadline = time.monotonic() + timeout_s
        state = self._wait(release_id, deadline)
        if state.status is not ReleaseStatus.SUCCEEDED:
            raise RuntimeError(f"{release_id} ended {state.status}: {state.failure}")
        self._wait_for_locks(release_id, deadline)
        return self.parts.store.timeline(release_id)

    def _wait(self, release_id: str, deadline: float) -> ReleaseState:
        while time.monotonic() < deadline:
            self._check_alive()
            stored = self.parts.store.load(release_id)
            if stored is not None and stored.state.status.is_terminal:
                return stored.state
            time.sleep(_POLL_S)
        raise TimeoutError(f"{release_id} did not end in time")

    def _check_alive(self) -> None:
        dead = [str(p.args) for p in self.processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"Drover exited ({', '.join(dead)}); {_logs(self.folder)}")

    def _wait_for_locks(self, release_id: str, deadline: float) -> None:
        # The coordinator frees a release's locks just after committing its end: a release
        # submitted in between would queue behind it, and its figure would include the wait.
        while self.parts.store.locks_of(release_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release_id} kept its locks")
            time.sleep(0.05)


@contextmanager
def drover_processes(
    options: Options,
    services: int,
    *,
    concurrency: int = WORKER_CONCURRENCY,
    log_level: str = "info",
) -> Iterator[DroverRun]:
    """A coordinator and one worker for ``services`` simulated services, warmed up.

    The first release (one component) is run before the caller's: both processes have
    then connected, declared their queues and served a component, so the caller's figure
    holds no start-up. ``log_level`` is Drover's default, ``info``: its logging is part
    of what it costs.
    """
    namespace = f"bench-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="drover-bench-") as scratch:
        folder = Path(scratch)
        fleet_path = _write_fleet(folder, service_names(services))
        env = _environment(options, namespace, fleet_path, concurrency, log_level)
        processes: list[subprocess.Popen[bytes]] = []
        parts: Parts | None = None
        try:
            processes.append(_start(folder, "coordinator", env, "coordinator"))
            processes.append(_start(folder, "worker", env, "worker", "--service", "all"))
            settings = Settings(
                broker_url=options.broker_url,
                store_url=options.redis_url,
                namespace=namespace,
                fleet=fleet_path,
            )
            parts = connect(settings, load_fleet(fleet_path))
            run = DroverRun(options, namespace, folder, parts, processes)
            _warm_up(run)
            yield run
        finally:
            _stop(processes)
            if parts is not None:
                parts.close()
            forget(options, namespace, service_names(services))
            if options.broker == "redis" and len(processes) == 2:
                _forget_pidbox(options.redis_url, processes[1].pid)


def _write_fleet(folder: Path, names: Sequence[str]) -> Path:
    service = {"driver": {"kind": "simulated", "initial_version": "1.0.0", "latency_ms": 0}}
    fleet = {
        "environments": {
            ENVIRONMENT: {"services": {n: {**service, "hosts": [f"{n}-1"]} for n in names}}
        }
    }
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False), encoding="utf-8")
    return path


def _environment(
    options: Options, namespace: str, fleet: Path, concurrency: int, log_level: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env.update(
        DROVER_BROKER_URL=options.broker_url,
        DROVER_STORE_URL=options.redis_url,
        DROVER_FLEET=str(fleet),
        DROVER_NAMESPACE=namespace,
        DROVER_WORKER_CONCURRENCY=str(concurrency),
        DROVER_LOG_FORMAT="json",
        DROVER_LOG_LEVEL=log_level,
    )
    return env


def _start(folder: Path, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _warm_up(run: DroverRun) -> None:
    path = run.release_file(independent(1), "1.0.1")
    try:
        run.run_release(path, timeout_s=_READY_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as exc:
        raise RuntimeError(f"Drover did not come up: {exc}; {_logs(run.folder)}") from exc


def _logs(folder: Path) -> str:
    return " | ".join(
        f"{log.name}: {log.read_text(errors='replace')[-2000:]}" for log in folder.glob("*.log")
    )


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def forget(options: Options, namespace: str, services: Sequence[str]) -> None:
    """Remove a run's store keys, and its queues and exchanges on the broker."""
    forget_keys(options.redis_url, namespace)
    if options.broker == "rabbitmq":
        _forget_on_rabbitmq(options.amqp_url, namespace, services)


def forget_keys(redis_url: str, namespace: str) -> None:
    """Every Redis key under a namespace: the store's, and the broker's when it is Redis."""
    # kombu's Redis transport keeps each exchange's bindings under keys of its own.
    patterns = [namespace, f"_kombu.binding.{namespace}", f"_kombu.binding_permanent.{namespace}"]
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in patterns:
            for key in client.scan_iter(match=f"{pattern}*", count=1000):
                client.delete(key)
    finally:
        client.close()


def _forget_pidbox(redis_url: str, pid: int) -> None:
    # A Celery worker on Redis joins a set every worker shares (its remote-control
    # mailbox) and stays there after it exits; its name is Drover's, from its pid.
    shared = "_kombu.binding.celery.pidbox"
    mailbox = f"drover-{pid}@{socket.gethostname()}.celery.pidbox"
    client = redis.Redis.from_url(redis_url)
    try:
        for member in client.smembers(shared):
            if _text(member).endswith(mailbox):
                client.srem(shared, member)
    finally:
        client.close()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _forget_on_rabbitmq(url: str, namespace: str, services: Sequence[str]) -> None:
    names = ["commands", "coordinator", "events", "default", *(f"svc.{s}" for s in services)]
    with Connection(url) as connection:
        channel = connection.channel()
        for name in names:
            # Deleting what does not exist is no error on RabbitMQ.
            channel.queue_delete(f"{namespace}.{name}")
            channel.exchange_delete(f"{namespace}.{name}")
        channel.close()
