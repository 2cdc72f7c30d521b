# kombu ships only partial annotations (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-untyped-calls=False
"""Drover as real processes for a benchmark: the files they read, the processes, a client
beside them, and what a release took, read from its timeline.

A cluster is started exactly as an operator would start one (``python -m orchestrator
coordinator|worker`` with ``DROVER_*`` variables), on a namespace of its own; whatever it
left in the store and on the broker is removed afterwards, whatever happened. Figures come
from the timeline: the ``occurred_at`` each message was given where it was made, so the
benchmark's own polling never enters a figure. The end-to-end tests do the same, but
``bench`` must not import from ``tests``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import redis
from kombu.connection import Connection

from bench.measure import Figure, Runs
from bench.options import Options
from orchestrator.client import Client
from orchestrator.contract import Envelope
from orchestrator.plans import load_fleet, load_release
from orchestrator.runtime import Parts, connect
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.settings import Settings

__all__ = [
    "ENVIRONMENT",
    "RELEASE_TIMEOUT_S",
    "WARMUP_SERVICE",
    "WORKER_CONCURRENCY",
    "Cluster",
    "cluster",
    "forget",
    "forget_keys",
    "fresh_namespace",
    "processor_figures",
    "processor_per",
    "servers",
    "service_names",
    "span_seconds",
    "write_fleet",
    "write_release",
]

ENVIRONMENT: Final = "bench"
# A one-host service every benchmark fleet has: a release of it proves the coordinator
# and the worker are both consuming before the clock starts on the measured release,
# without touching (or locking) a service the measured release moves.
WARMUP_SERVICE: Final = "warmup"
# Drover's own default (DROVER_WORKER_CONCURRENCY): the bare Celery worker a figure is
# compared with gets the same number of threads, so neither side has more slots.
WORKER_CONCURRENCY: Final = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "4"))
# Generous: a benchmark that stalls should fail with a reason, not hang the runner.
RELEASE_TIMEOUT_S: Final = float(os.environ.get("BENCH_RELEASE_TIMEOUT_S", "1800"))
_WARMUP_TIMEOUT_S: Final = 120.0
_POLL_S: Final = 0.5  # reading a 1,000-component state costs the store; not more often
_STOP_WAIT_S: Final = 15.0
_LOG_TAIL: Final = 3000  # characters of a process's log shown when it fails
# Where the servers a run uses run on this machine, their processor time is measured
# beside Drover's: Redis says its pid; RabbitMQ's is the Erlang VM's (/proc/<pid>/comm).
_RABBITMQ_PROCESS: Final = "beam.smp"
_THIS_MACHINE: Final = frozenset({"127.0.0.1", "localhost", "::1"})


# --- files ---------------------------------------------------------------------------------


def service_names(count: int) -> list[str]:
    return [f"svc-{i:05d}" for i in range(count)]


def fresh_namespace(tag: str) -> str:
    # DROVER_NAMESPACE allows ^[a-z][a-z0-9-]{0,40}$.
    return f"bench-{tag}-{uuid.uuid4().hex[:10]}"


def write_fleet(
    folder: Path,
    hosts_per_service: Mapping[str, int],
    batch: int,
    timeouts: Mapping[str, float] | None = None,
) -> Path:
    """One environment of simulated services with zero latency, rolling ``batch`` at a time,
    plus :data:`WARMUP_SERVICE`.

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
        "driver": {"kind": "simulated", "initial_version": "1.0.0", "latency_ms": 0},
    }


def write_release(
    folder: Path, name: str, services: Sequence[str], version: str, *, chained: bool = False
) -> Path:
    """A release file moving ``services`` to ``version``: independent of each other, or
    ``chained``, each depending on the one before it (so one is in flight at a time)."""
    components: list[dict[str, Any]] = [{"service": s, "version": version} for s in services]
    if chained:
        for before, component in zip(services[:-1], components[1:], strict=True):
            component["depends_on"] = [before]
    release = {"environment": ENVIRONMENT, "reason": f"bench {name}", "components": components}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(release))
    return path


# --- processes -----------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running coordinator and worker, a client beside them, and the folder of their
    files and logs."""

    folder: Path
    parts: Parts
    client: Client
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: dict[str, int] = field(default_factory=dict)  # role -> pid, on this machine

    def submit(self, paths: Sequence[Path]) -> list[str]:
        """Submit a release per file, one right after the other; their ids, in order."""
        # Every file is read before the first is sent, so that the submissions go out
        # together and reading YAML stays outside the measured time.
        requests = [load_release(path) for path in paths]
        return [self.client.submit(request, actor="bench") for request in requests]

    def wait_for(
        self,
        release_ids: Sequence[str],
        timeout_s: float = RELEASE_TIMEOUT_S,
        poll_s: float = _POLL_S,
    ) -> list[list[Envelope]]:
        """Wait until every release has succeeded, and return their timelines; raise if
        one did not succeed, a process died, or time ran out.

        Polls the store, one release at a time: all of them must end, so waiting for each
        in turn costs one load per look however many there are. A look reads the
        release's own fields, not its components, so that it takes little CPU from Drover
        on a small machine however wide the release (reading the whole of a
        1,000-component release at every look took the more of it the longer the
        release ran: P3's time grew faster than its hosts). The figures come from the
        timelines, so how often we look changes nothing else.
        """
        deadline = time.monotonic() + timeout_s
        for release_id in release_ids:
            while (state := self._status_of(release_id)) is None or not state.status.is_terminal:
                self._assert_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{release_id} has not ended after {timeout_s:.0f} s")
                time.sleep(poll_s)
            if state.status is not ReleaseStatus.SUCCEEDED:
                raise RuntimeError(f"{release_id} ended {state.status}: {state.failure}")
        return [self.parts.store.timeline(release_id) for release_id in release_ids]

    def first_and_again(
        self,
        name: str,
        services: Sequence[str],
        *,
        chained: bool = False,
        processor: list[dict[str, float]] | None = None,
    ) -> tuple[list[Envelope], list[Envelope]]:
        """The timelines of a release moving ``services`` (see :func:`write_release`), then
        of the same release to the next version once it has succeeded.

        A fleet's queues outlive its releases: on RabbitMQ the first persistent message
        into a queue costs the broker about a millisecond more than every later one (the
        queue's index is made on disk), once in the queue's life. The first release pays
        that for each of its services; the second is what a fleet's everyday release
        costs. Each role's processor time per component over the second goes to
        ``processor``, if given.
        """
        first = write_release(self.folder, f"{name}-first", services, "2.0.0", chained=chained)
        again = write_release(self.folder, name, services, "3.0.0", chained=chained)
        [first_timeline] = self.wait_for(self.submit([first]))
        with self.processor_per_component(len(services), processor):
            [again_timeline] = self.wait_for(self.submit([again]))
        return first_timeline, again_timeline

    def _status_of(self, release_id: str) -> ReleaseState | None:
        """The release's own fields (its status, why it failed), without its components."""
        stored = self.parts.store.load(release_id, components=())
        return None if stored is None else stored.state

    def peak_memory_mb(self, name: str) -> float:
        """The process's resident high-water mark (VmHWM), in MiB."""
        status = Path(f"/proc/{self.processes[name].pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # the kernel says kB

    def processor_per_component(
        self, components: int, into: list[dict[str, float]] | None
    ) -> AbstractContextManager[None]:
        """Each role's and server's processor time over the block, in ms per component,
        added to ``into`` if given: what a release costs each, less noisy than its time."""
        pids = {name: process.pid for name, process in self.processes.items()} | self.servers
        return processor_per(pids, components, into)

    def _assert_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = _log_tail(self.folder, name)
                raise RuntimeError(f"{name} exited with {process.returncode}: {tail}")


@contextmanager
def cluster(
    options: Options,
    tag: str,
    hosts_per_service: Mapping[str, int],
    *,
    batch: int,
    timeouts: Mapping[str, float] | None = None,
) -> Iterator[Cluster]:
    """A coordinator and one worker (``--service all``, ``BENCH_WORKER_CONCURRENCY``
    threads) on a fleet of ``hosts_per_service`` (see :func:`write_fleet`), warmed up;
    stopped and forgotten afterwards.
    """
    namespace = fresh_namespace(tag)
    with tempfile.TemporaryDirectory(prefix=f"{namespace}-") as scratch:
        folder = Path(scratch)
        fleet_path = write_fleet(folder, hosts_per_service, batch, timeouts)
        parts = connect(_settings(options, namespace, fleet_path), load_fleet(fleet_path))
        running = Cluster(folder, parts, Client(parts.store, parts.bus), servers=servers(options))
        env = _process_env(options, namespace, fleet_path)
        try:
            # The coordinator declares its queues as it starts; declaring them here too
            # means a submission made before it is up waits in its queue instead of
            # being dropped by an exchange with nothing bound to it.
            parts.bus.declare()
            running.processes["coordinator"] = _start(folder, env, "coordinator")
            running.processes["worker"] = _start(folder, env, "worker", "--service", "all")
            _warm_up(running)
            yield running
        finally:
            _stop(list(running.processes.values()))
            parts.close()
            worker = running.processes.get("worker")
            worker_pid = worker.pid if worker else None
            forget(options, namespace, parts.fleet.service_names(), worker_pid)


def _settings(options: Options, namespace: str, fleet_path: Path) -> Settings:
    return Settings(
        broker_url=options.broker_url,
        store_url=options.redis_url,
        namespace=namespace,
        fleet=fleet_path,
        log_level="warning",
    )


def _process_env(options: Options, namespace: str, fleet_path: Path) -> dict[str, str]:
    # Only our DROVER_* variables: one left in the caller's environment could point a
    # process at another broker or store.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env |= {
        "DROVER_BROKER_URL": options.broker_url,
        "DROVER_STORE_URL": options.redis_url,
        "DROVER_FLEET": str(fleet_path),
        "DROVER_NAMESPACE": namespace,
        "DROVER_WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "DROVER_LOG_FORMAT": "json",
        "DROVER_LOG_LEVEL": "info",  # Drover's default: its logging is part of its cost
    }
    return env


def _start(folder: Path, env: dict[str, str], role: str, *args: str) -> subprocess.Popen[bytes]:
    """``python -m orchestrator ROLE …``, its output in ``ROLE.log``."""
    with (folder / f"{role}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", role, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _warm_up(running: Cluster) -> None:
    """Run the one-host warm-up release: both roles are consuming once it has ended."""
    path = write_release(running.folder, "warmup", [WARMUP_SERVICE], "0.0.1")
    try:
        running.wait_for(running.submit([path]), _WARMUP_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as exc:
        logs = " | ".join(
            f"{name}: {_log_tail(running.folder, name)}" for name in running.processes
        )
        raise RuntimeError(f"Drover did not come up: {exc}; {logs}") from exc


def _log_tail(folder: Path, role: str) -> str:
    return (folder / f"{role}.log").read_text(errors="replace")[-_LOG_TAIL:]


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    # SIGTERM to all first, so that they shut down side by side, then wait for each.
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- what a cluster leaves behind ----------------------------------------------------------


def forget(
    options: Options, namespace: str, services: Sequence[str], worker_pid: int | None = None
) -> None:
    """Remove store keys, kombu's Redis keys or RabbitMQ's queues and exchanges."""
    forget_keys(options.redis_url, namespace)
    if options.broker == "rabbitmq":
        _forget_rabbitmq(options.amqp_url, namespace, services)
    elif worker_pid is not None:
        _forget_pidbox(options.redis_url, worker_pid)


def forget_keys(redis_url: str, namespace: str) -> None:
    """Every Redis key under a namespace: the store's, and the broker's when it is Redis."""
    with redis.Redis.from_url(redis_url) as client:
        # The store's keys and kombu's queue lists start with the namespace; kombu keeps
        # each exchange's bindings under a key of its own, with the namespace inside.
        for prefix in ("", "_kombu.binding.", "_kombu.binding_permanent."):
            keys = list(client.scan_iter(match=f"{prefix}{namespace}*", count=1000))
            for start in range(0, len(keys), 500):  # a few big DELs, not one per key
                client.delete(*keys[start : start + 500])


def _forget_pidbox(redis_url: str, worker_pid: int) -> None:
    # A Celery worker on Redis binds its remote-control mailbox in one set shared by every
    # Celery on this Redis, and one that did not shut down cleanly leaves it there; Drover
    # names the worker after its pid.
    shared = "_kombu.binding.celery.pidbox"
    mailbox = f"drover-{worker_pid}@{socket.gethostname()}.celery.pidbox".encode()
    with redis.Redis.from_url(redis_url) as client:
        ours = [member for member in client.smembers(shared) if member.endswith(mailbox)]
        if ours:
            client.srem(shared, *ours)


def _forget_rabbitmq(amqp_url: str, namespace: str, services: Sequence[str]) -> None:
    # The names orchestrator.bus.Topology and Celery's default queue give them.
    queues = ["commands", "coordinator", "default", *(f"svc.{s}" for s in services)]
    exchanges = ["commands", "events", "progress", "default", *(f"svc.{s}" for s in services)]
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(f"{namespace}.{queue}")
        for exchange in exchanges:
            channel.exchange_delete(f"{namespace}.{exchange}")
        channel.close()


# --- what a release took --------------------------------------------------------------------


def _processor_ms(pid: int) -> float:
    # /proc/<pid>/stat: the command's name (field 2) may hold spaces, so the fields are
    # counted after its closing parenthesis; utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def servers(options: Options) -> dict[str, int]:
    """The processes of the servers a run uses (Redis, the store, always; RabbitMQ when it
    is the broker), by role: those running on this machine."""
    found: dict[str, int] = {}
    if _here(options.redis_url):
        client = redis.Redis.from_url(options.redis_url)
        try:
            found["redis"] = int(client.info("server")["process_id"])
        finally:
            client.close()
    if options.broker == "rabbitmq" and _here(options.amqp_url):
        pid = next(_pids_named(_RABBITMQ_PROCESS), None)
        if pid is not None:
            found["rabbitmq"] = pid
    return found


def _here(url: str) -> bool:
    return urlsplit(url).hostname in _THIS_MACHINE


def _pids_named(name: str) -> Iterator[int]:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                yield int(comm.parent.name)
        except OSError:  # gone since it was listed
            continue


@contextmanager
def processor_per(
    pids: Mapping[str, int], units: int, into: list[dict[str, float]] | None
) -> Iterator[None]:
    """Each process's processor time (user and system, every thread) over the block, in
    ms per unit of work, added to ``into`` if given."""
    before = {name: _processor_ms(pid) for name, pid in pids.items()}
    yield
    if into is not None:
        into.append(
            {name: (_processor_ms(pid) - before[name]) / units for name, pid in pids.items()}
        )


def processor_figures(
    benchmark: str, per_run: Sequence[Mapping[str, float]], per: str = "component"
) -> list[Figure]:
    """A figure per role of its processor time per component (or other ``per``) over the
    runs (no bare side: the rate's ratio says how Drover compares; this says where its
    time went). The servers' are all their work meanwhile, whoever asked for it."""
    return [
        Figure(
            f"{benchmark} {role} processor",
            Runs(f"{role} processor per {per}", f"ms/{per[:4]}", tuple(r[role] for r in per_run)),
        )
        for role in per_run[0]
    ]


def span_seconds(
    timelines: Sequence[Sequence[Envelope]],
    first: str = "SubmitRelease",
    last: str = "ReleaseSucceeded",
) -> float:
    """From the earliest ``first`` message to the latest ``last`` one, over one release's
    timeline or several; by default from the submission (the client's clock) to the end
    the coordinator committed (:meth:`Cluster.wait_for` returns only releases that
    succeeded)."""
    # occurred_at is when a message was made: for the end event that is the moment the
    # coordinator decided the release was over, after working through any backlog.
    start = min(m.occurred_at for timeline in timelines for m in timeline if m.type == first)
    end = max(m.occurred_at for timeline in timelines for m in timeline if m.type == last)
    return (end - start).total_seconds()
