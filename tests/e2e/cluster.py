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

import pytest

from orchestrator.plans import load_fleet
from tests.conftest import AMQP_URL, REDIS_URL, require
from tests.e2e.scenarios import FLEET, clean_env

BROKERS = {
    "redis": ("Redis", 6379, REDIS_URL),
    "rabbitmq": ("RabbitMQ", 5672, AMQP_URL),
}


@dataclass
class Cluster:
    """Drover's processes for one namespace on one broker."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        for process in self.processes.values():
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
def running_cluster(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A coordinator and two workers on ``broker``, stopped and cleaned up afterwards."""
    service, port, broker_url = BROKERS[broker]
    require(service, "127.0.0.1", port)
    require("Redis", "127.0.0.1", 6379)
    namespace = f"drovertest-{uuid.uuid4().hex[:10]}"
    env = clean_env(
        broker_url=broker_url, store_url=REDIS_URL, fleet=str(FLEET), namespace=namespace
    )
    cluster = Cluster(env, tmp_path_factory.mktemp(f"cluster-{broker}"))
    cluster.start("coordinator", "coordinator")
    cluster.start("worker-all", "worker", "--service", "all")
    cluster.start("worker-api-db", "worker", "--service", "api", "--service", "db")
    try:
        yield cluster
    finally:
        cluster.stop()
        _forget(namespace, broker_url)


def _forget(namespace: str, broker_url: str) -> None:
    """Remove what the run left on the brokers: store keys, and queues on RabbitMQ."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        client.delete(key)
    client.close()
    if broker_url.startswith("amqp"):
        from kombu.connection import Connection

        with Connection(broker_url) as connection:
            channel = connection.channel()
            services = [f"svc.{name}" for name in load_fleet(FLEET).service_names()]
            for queue in ["commands", "coordinator", *services]:
                channel.queue_delete(f"{namespace}.{queue}")
            for exchange in ["commands", "events", *services]:
                channel.exchange_delete(f"{namespace}.{exchange}")
            channel.close()
