"""Drover as separate processes, started through the CLI, for end-to-end tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import AMQP_URL, REDIS_URL, require
from tests.e2e.scenarios import FLEET, clean_env
from tests.support.listening import forget_on_rabbitmq

BROKERS = {
    "redis": ("Redis", 6379, REDIS_URL),
    "rabbitmq": ("RabbitMQ", 5672, AMQP_URL),
}


@dataclass
class Cluster:
    """Drover's processes for one namespace on one broker, each started by name."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def start(self, name: str, *args: str, **extra_env: str) -> None:
        """Start a ``drover`` process; ``extra_env`` adds DROVER_* variables for it alone."""
        env = {**self.env, **{f"DROVER_{k.upper()}": v for k, v in extra_env.items()}}
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.commands[name] = args
        log.close()

    def restart(self, name: str) -> None:
        """Start a process again as it was first started, without any drill settings."""
        self.start(name, *self.commands[name])

    def kill(self, name: str) -> None:
        """kill -9: no warning, no clean-up, exactly what a crash looks like."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def name_of(self, pid: int) -> str:
        return next(n for n, p in self.processes.items() if p.pid == pid)

    def exited(self, name: str) -> bool:
        return self.processes[name].poll() is not None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def assert_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"processes exited: {dead}; logs in {self.logs}"


@contextmanager
def running_cluster(
    broker: str,
    logs: Path,
    *,
    fleet: Path = FLEET,
    broker_url: str | None = None,
    workers: dict[str, tuple[str, ...]] | None = None,
    coordinator_drills: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[Cluster]:
    """A coordinator and workers on ``broker``, stopped and cleaned up afterwards.

    Each process writes its output to ``<logs>/<name>.log``.

    By default two workers: one for every service, one for api and db only, so that two
    processes compete for those queues. ``settings`` are more DROVER_* variables for
    every process; ``coordinator_drills`` for the first coordinator only (a restart
    goes without them).
    """
    service, port, default_url = BROKERS[broker]
    require(service, "127.0.0.1", port)
    require("Redis", "127.0.0.1", 6379)
    namespace = f"drovertest-{uuid.uuid4().hex[:10]}"
    url = broker_url or default_url
    env = clean_env(
        broker_url=url, store_url=REDIS_URL, fleet=str(fleet), namespace=namespace, **settings
    )
    cluster = Cluster(env, logs)
    cluster.start("coordinator", "coordinator", **(coordinator_drills or {}))
    chosen = (
        workers if workers is not None else {"worker-all": ("all",), "worker-api-db": ("api", "db")}
    )
    for name, services in chosen.items():
        cluster.start(name, "worker", *(arg for s in services for arg in ("--service", s)))
    try:
        yield cluster
    finally:
        cluster.stop()
        _forget(namespace, url, fleet)


def _forget(namespace: str, broker_url: str, fleet: Path) -> None:
    """Remove what the run left on the brokers: store keys, and queues on RabbitMQ."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        client.delete(key)
    client.close()
    if broker_url.startswith("amqp"):
        forget_on_rabbitmq(broker_url, namespace, fleet)
