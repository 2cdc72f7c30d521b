"""Instructions: what carrying out one component costs the worker, counted, not timed.

On a shared machine a rate moves by a third from one run to the next, and so does the
processor time behind it: a change worth a tenth is lost in that. The number of machine
instructions a piece of work executes does not move (valgrind's ``callgrind`` counts
them; what else the machine is doing changes nothing). This benchmark counts, in a
process of its own under ``callgrind``:

* **drover**: a worker's runner (``workers.tasks.ComponentRunner``) carrying out one-host
  deploy commands one after another in one thread, as a Celery worker thread does, with
  the store and the bus of a worker (Redis, and the broker chosen), a simulated driver
  with no latency, and Drover's default logging;
* **floor**: the floor's component (:mod:`bench.floor`): its nine durable writes, then
  its outcome published, and nothing else;
* **worker**: a whole worker process (``orchestrator.runtime.run_worker``: Celery's
  consumer over the fleet's queues, its pool threads running the runner, the lease
  keeper and the live feed), carrying out one-host deploy commands queued for it before
  it starts, and stopping (Celery's warm shutdown) once it has carried them all out:
  what the runner costs, and what Celery and Drover's transport add to take, hand over
  and acknowledge each command;
* **coordinator**: the coordinator (``orchestrator.coordinator.Coordinator``) given a
  chain's outcomes one after another in one thread, as its consumer gives them: each
  decided, committed, the next component's command published (to Redis, and the broker
  chosen) and the outcome acknowledged, with Drover's default logging. The chain's
  components wait in the release until their turn, so the count grows a little with the
  chain's length (the waiting are looked at after each outcome).

and, beside them, what a component's parts cost, each done over and over in a process of
its own (``BENCH_INSTRUCTIONS_PARTS`` times, default ``2000,6000``): an event made and
encoded (a worker's ``StepStarted``: its payload, its envelope, its JSON), a log line at
info (JSON, to standard error, with a message's context bound), and a store call on
Drover's way to Redis (``orchestrator.redis_calls``: a small script, waited for, and sent
ahead then waited for).

Each is run twice, with ``BENCH_INSTRUCTIONS_COMPONENTS`` (default ``20,60``) components,
and the difference between the two counts over the difference in components is what one
component costs: start-up, imports and the first command fall out. Both runs set up the
same fleet (and, for the coordinator, the same release) of the larger size, so that
setting it up (the fleet file read, the queues declared) falls out too: only the number
of components carried out differs. (Until 2026-12-06 the fleet grew with the run, and
its setting up, about 4 million instructions a service on the runner's side and 7 on the
coordinator's, was counted as the components'.) The runner's and the coordinator's
sides leave Celery's consumer and Drover's consumer out: they measure what Drover does
with a command, and what the coordinator does with an outcome; the worker's side puts
Celery's in. Needs valgrind; each side takes about half a minute, the worker's a few.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis
from celery.signals import task_postrun

from bench.bare import STORE_WRITE, celery_app, floor_component, outcome_publisher
from bench.floor import WORKER_STORE_CALLS
from bench.measure import Figure, Runs
from bench.options import Options
from bench.processes import (
    ENVIRONMENT,
    forget,
    fresh_namespace,
    service_names,
    write_fleet,
    write_release,
)
from orchestrator.bus import Delivery
from orchestrator.contract import (
    ComponentDeployed,
    DeployComponent,
    Envelope,
    StepStarted,
    envelope,
    random_id,
)
from orchestrator.coordinator import Coordinator
from orchestrator.observability import configure_logging, get_logger, message_context
from orchestrator.plans import load_fleet, load_release
from orchestrator.redis_calls import KeptConnections, Lua
from orchestrator.runtime import Parts, connect, run_worker
from orchestrator.settings import Settings
from orchestrator.vocabulary import Step
from workers.tasks import ComponentRunner, WorkerLimits

__all__ = ["run"]

SIZES: Final = tuple(
    int(n) for n in os.environ.get("BENCH_INSTRUCTIONS_COMPONENTS", "20,60").split(",")
)
PART_COUNTS: Final = tuple(
    int(n) for n in os.environ.get("BENCH_INSTRUCTIONS_PARTS", "2000,6000").split(",")
)
SIDES: Final = ("drover", "floor", "coordinator", "worker")
PARTS: Final = ("event", "log line", "store call", "store call ahead")
_COLLECTED: Final = re.compile(r"Collected : (\d+)")
_CHILD_LIMIT_S: Final = 1800  # a counted process runs some fifty times slower than usual


def run(options: Options) -> list[Figure]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("the instructions benchmark needs valgrind (Debian's valgrind)")
    for counts in (SIZES, PART_COUNTS):
        if len(counts) != 2 or not 0 < counts[0] < counts[1]:
            raise ValueError(f"two counts, smaller first, not {counts}")
    drover, floor, coordinator, worker = (_per_component(options, side) for side in SIDES)
    notes = {"components": list(SIZES), "floor_store_calls": WORKER_STORE_CALLS}
    priced = [
        Figure(
            f"instructions per {part}",
            Runs(part, "k instr", (_per_part(options, part) / 1e3,)),
            notes={"counts": list(PART_COUNTS)},
        )
        for part in PARTS
    ]
    return [
        Figure(
            "instructions per component",
            Runs("worker's runner, one thread", "M instr", (drover / 1e6,)),
            Runs("floor component, one thread", "M instr", (floor / 1e6,)),
            notes=notes,
            sides=("drover", "floor"),
        ),
        Figure(
            "worker process per component",
            Runs("worker process, Celery's consumer in", "M instr", (worker / 1e6,)),
            Runs("worker's runner, one thread", "M instr", (drover / 1e6,)),
            notes={"components": list(SIZES)},
            sides=("process", "runner"),
        ),
        Figure(
            "coordinator instructions per component",
            Runs("coordinator, a chain's outcomes", "M instr", (coordinator / 1e6,)),
            notes={"components": list(SIZES)},
        ),
        *priced,
    ]


def _per_component(options: Options, side: str) -> float:
    small, large = (_instructions(options, side, n) for n in SIZES)
    return (large - small) / (SIZES[1] - SIZES[0])


def _per_part(options: Options, part: str) -> float:
    fewer, more = (_instructions(options, part, n) for n in PART_COUNTS)
    return (more - fewer) / (PART_COUNTS[1] - PART_COUNTS[0])


def _instructions(options: Options, side: str, components: int) -> int:
    """Instructions a child process executes carrying out ``components`` on ``side``."""
    namespace = fresh_namespace("instr")
    with tempfile.TemporaryDirectory(prefix=f"{namespace}-") as scratch:
        report = Path(scratch) / "callgrind.log"
        at = _Setting(SIZES[-1], options.broker_url, options.redis_url, namespace, Path(scratch))
        if side == "worker":
            _queue_commands(at, components)
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            f"--log-file={report}",
            sys.executable,
            "-m",
            "bench.instructions",
            side,
            str(components),
            str(at.fleet_size),
            at.broker_url,
            at.redis_url,
            at.namespace,
            str(at.folder),
        ]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, stderr = child.communicate(timeout=_CHILD_LIMIT_S)
        except subprocess.TimeoutExpired:  # a worker that never carried them all out
            child.kill()
            _, stderr = child.communicate()
        finally:  # valgrind runs the program in its own process: the worker's pid is this
            forget(options, namespace, service_names(SIZES[-1] + 1), worker_pid=child.pid)
        if child.returncode != 0:
            raise RuntimeError(
                f"{side} ({components}) exited {child.returncode}: {stderr[-3000:].decode()}"
            )
        found = _COLLECTED.search(report.read_text())
    if found is None:
        raise RuntimeError(f"callgrind reported no count for {side} ({components})")
    return int(found.group(1))


# --- in the counted process ------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """Where a counted process works, and the size of the fleet it sets up."""

    fleet_size: int
    broker_url: str
    redis_url: str
    namespace: str
    folder: Path


def _connected(at: _Setting, services: list[str]) -> Parts:
    """A worker's or coordinator's parts over a fleet of one-host ``services``."""
    fleet = write_fleet(at.folder, dict.fromkeys(services, 1), batch=1)
    settings = Settings(
        broker_url=at.broker_url,
        store_url=at.redis_url,
        namespace=at.namespace,
        fleet=fleet,
        # The worker side's one pool thread takes its commands one after another, each
        # acknowledged before the next is taken: with four, how many a poll finds waiting
        # changes from run to run, and with it the count (6.1 to 7.0 million a component).
        worker_concurrency=1,
    )
    parts = connect(settings, load_fleet(fleet))
    parts.bus.declare()
    return parts


def _drover(components: int, at: _Setting) -> None:
    configure_logging("json", "info")  # Drover's default: its logging is part of its cost
    services = service_names(at.fleet_size + 1)
    parts = _connected(at, services)
    try:
        runner = ComponentRunner(parts.fleet, parts.store, parts.bus, WorkerLimits())
        for command in _commands(services[: components + 1]):  # the first warms up
            runner.deploy(command.to_wire())
    finally:
        parts.close()


def _commands(services: list[str]) -> Iterator[Envelope]:
    """One-host deploy commands of one release, one to each of ``services``."""
    release_id = uuid.uuid4().hex[:12]
    for service in services:
        command = DeployComponent(environment=ENVIRONMENT, service=service, version="2.0.0")
        yield envelope(command, release_id=release_id, actor="bench")


def _queue_commands(at: _Setting, components: int) -> None:
    """The worker side's commands, waiting in their queues before the counted worker
    starts (sent from the benchmark's process, so that sending them is not counted)."""
    services = service_names(at.fleet_size + 1)
    parts = _connected(at, services)
    try:
        parts.bus.declare_service_queues(services)
        for command in _commands(services[: components + 1]):
            parts.bus.publish(command)
    finally:
        parts.close()


def _worker(components: int, at: _Setting) -> None:
    configure_logging("json", "info")
    services = service_names(at.fleet_size + 1)
    parts = _connected(at, services)
    carried_out = itertools.count(1)

    def stop_once_all_are_carried_out(**_: object) -> None:
        if next(carried_out) == components + 1:
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown, as on-call's

    task_postrun.connect(stop_once_all_are_carried_out, weak=False)
    try:
        run_worker(parts, services)  # every queue of the fleet, as a worker serving it
    finally:
        parts.close()


def _coordinator(components: int, at: _Setting) -> None:
    configure_logging("json", "info")
    services = service_names(at.fleet_size + 1)
    release = load_release(write_release(at.folder, "chain", services, "2.0.0", chained=True))
    parts = _connected(at, services)
    try:
        parts.bus.declare_service_queues(services)  # as the coordinator's start does
        coordinator = Coordinator(parts.store, parts.bus, parts.fleet)
        release_id = uuid.uuid4().hex[:12]
        coordinator.handle(_delivered(envelope(release, release_id=release_id, actor="bench")))
        for service in services[: components + 1]:  # the first warms up, as the runner's does
            deployed = ComponentDeployed(
                environment=ENVIRONMENT,
                service=service,
                version="2.0.0",
                previous_versions={f"{service}-h000": "1.0.0"},
            )
            coordinator.handle(_delivered(envelope(deployed, release_id=release_id, actor="w")))
    finally:
        parts.close()


def _delivered(message: Envelope) -> Delivery:
    return Delivery(message.encode(), "coordinator", ack=_settled, requeue=_settled)


def _settled() -> None:
    """Acknowledged: the message came from no queue."""


def _floor(components: int, at: _Setting) -> None:
    app = celery_app(at.broker_url, at.namespace)
    publish = outcome_publisher(app)
    store = redis.Redis.from_url(at.redis_url)
    store_write = store.register_script(STORE_WRITE)
    outcome = f"{at.namespace}.outcomes"
    for n in range(components + 1):
        key = f"{at.namespace}:floor:{n}"
        floor_component(
            store_write, publish, key=key, outcome=outcome, n=n, calls=WORKER_STORE_CALLS
        )
    store.close()


# --- a component's parts, each done ``count`` times after one that warms up -------------


def _events(count: int, _at: _Setting) -> None:
    [cause] = _commands(["svc-00001"])
    for _ in range(count + 1):
        started = StepStarted(
            environment=ENVIRONMENT,
            service="svc-00001",
            step=Step.DEPLOY,
            batch=1,
            hosts=("svc-00001-h000",),
            rollback=False,
        )
        envelope(started, release_id=cause.release_id, actor="bench", causation=cause).encode()


def _log_lines(count: int, _at: _Setting) -> None:
    configure_logging("json", "info")
    log = get_logger(__name__)
    with message_context(release_id="r1", service="svc-00001", message_id=random_id()):
        for _ in range(count + 1):
            log.info("step started", step=Step.DEPLOY, batch=1, hosts=["h"], rollback=False)


_SMALL_WRITE: Final = Lua("redis.call('SET', KEYS[1], ARGV[1])")


def _store_calls(count: int, at: _Setting, *, ahead: bool = False) -> None:
    pool = redis.ConnectionPool.from_url(at.redis_url)
    calls, key, value = KeptConnections(pool), [f"{at.namespace}:part"], [b"x" * 200]
    for _ in range(count + 1):
        if ahead:
            calls.script_ahead(_SMALL_WRITE, key, value, lambda reply: reply).wait()
        else:
            calls.script(_SMALL_WRITE, key, value)
    calls.settle()
    pool.disconnect()


if __name__ == "__main__":
    side, count, fleet_size, broker, store_url, space, scratch_folder = sys.argv[1:8]
    setting = _Setting(int(fleet_size), broker, store_url, space, Path(scratch_folder))
    sides: dict[str, Callable[[int, _Setting], None]] = {
        "drover": _drover,
        "coordinator": _coordinator,
        "floor": _floor,
        "worker": _worker,
        "event": _events,
        "log line": _log_lines,
        "store call": _store_calls,
        "store call ahead": functools.partial(_store_calls, ahead=True),
    }
    sides[side](int(count), setting)
