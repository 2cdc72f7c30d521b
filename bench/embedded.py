# kombu ships only partial annotations (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-untyped-calls=False
"""P5: ``drover run``, everything in one process, beside kombu's in-memory transport alone.

``drover run`` (coordinator and a Celery worker as threads over Drover's in-memory broker,
a SQLite store in a temporary folder) runs one release over ``BENCH_P5_HOSTS`` hosts
(default 2,000: 100 services of 20 hosts, rolling batches of 5, simulated driver with
zero latency), in a child process started as a user would start it, ``--json``.

A *component step* here is one of drain, deploy, verify, undrain done to one host: a
``StepSucceeded`` covers a whole batch, so each counts ``len(hosts)`` steps. The rate is
those steps per second from the submission to ``ReleaseSucceeded``, both as the
timeline has them (the child's start-up is outside it). Goal: at least 5,000 steps/s, an
absolute bound, so that figure's ``bare`` is a run of 1.0 and its ratio is the rate.

The reference, measured in this process in the same run: messages per second through
kombu's own in-memory transport with Drover's transport options, a publisher thread and a
consumer thread, the way the embedded coordinator and worker share one interpreter.
``bench.bare`` measures kombu with processes, which ``memory://`` cannot cross.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from bench.measure import Figure, Runs
from bench.options import Options
from bench.processes import fresh_namespace, service_names, write_fleet, write_release
from orchestrator.bus import transport_options
from orchestrator.client import Client, show
from orchestrator.observability import configure_logging
from orchestrator.plans import load_fleet, load_release
from orchestrator.runtime import connect, embedded
from orchestrator.settings import EMBEDDED_BROKER_URL, Settings

__all__ = ["run"]

HOSTS: Final = int(os.environ.get("BENCH_P5_HOSTS", "2000"))
HOSTS_PER_SERVICE: Final = 20
BATCH: Final = 5
GOAL: Final = ">= 5000"
FORWARD_STEPS: Final = frozenset({"drain", "deploy", "verify", "undrain"})
KOMBU_MESSAGES: Final = int(os.environ.get("BENCH_P5_KOMBU_MESSAGES", "20000"))
# About the size of one of Drover's step events on the wire.
_BODY: Final = {"payload": "x" * 600}
_TIMEOUT_S: Final = float(os.environ.get("BENCH_P5_TIMEOUT_S", "1800"))


def run(options: Options) -> list[Figure]:
    cli: list[float] = []
    engine: list[float] = []
    bare: list[float] = []
    for _ in range(options.runs):  # the three side by side, run by run
        cli.append(_steps_per_second(_drover_run))
        engine.append(_steps_per_second(_runtime_embedded))
        bare.append(_kombu_memory_rate(KOMBU_MESSAGES))
    drover_run = Runs("drover run: host steps per second", "steps/s", tuple(cli))
    embedded = Runs("runtime.embedded: host steps per second", "steps/s", tuple(engine))
    kombu = Runs("kombu memory:// publish/consume", "msg/s", tuple(bare))
    one = Runs("one", "steps/s", (1.0,) * options.runs)
    notes = {"hosts": HOSTS, "host_steps": 4 * HOSTS, "batch": BATCH, "store": "sqlite"}
    return [
        Figure("p5 drover run steps/s", drover_run, one, GOAL, notes),
        Figure("p5 embedded steps/s", embedded, one, GOAL, notes),
        Figure("p5 drover run vs kombu mem", drover_run, kombu, notes=notes),
    ]


# --- Drover ----------------------------------------------------------------------------------


Release = Callable[[Path, Path, Path], dict[str, Any]]


def _steps_per_second(release: Release) -> float:
    """Host steps per second of one release over a fresh fleet, run by ``release``."""
    services = service_names(HOSTS // HOSTS_PER_SERVICE)
    with tempfile.TemporaryDirectory(prefix="bench-p5-") as scratch:
        folder = Path(scratch)
        fleet = write_fleet(folder, dict.fromkeys(services, HOSTS_PER_SERVICE), BATCH)
        path = write_release(folder, "embedded", services, "2.0.0")
        view = release(folder, fleet, path)
    if view["state"] != "succeeded":
        raise RuntimeError(f"the release ended {view['state']}: {view['failure']}")
    timeline: list[dict[str, Any]] = view["timeline"]
    return _host_steps(timeline) / _seconds(timeline)


def _drover_run(folder: Path, fleet: Path, release: Path) -> dict[str, Any]:
    """``drover run --json`` in a child process, exactly as a user runs it."""
    command = ["-m", "orchestrator", "run", str(release), "--fleet", str(fleet), "--json"]
    return _child(folder, [*command, "--timeout", str(_TIMEOUT_S)])


def _runtime_embedded(folder: Path, fleet: Path, release: Path) -> dict[str, Any]:
    """The same roles through ``runtime.embedded`` in a child process (this module's
    ``__main__``), waited for by a look at the state every half second.

    ``drover run`` follows its release by reading the whole timeline every 0.1 s, in the
    same interpreter as the coordinator and worker; this shows the engine without that.
    """
    return _child(folder, ["-m", "bench.embedded", str(fleet), str(release)])


def _child(folder: Path, arguments: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env |= {
        "DROVER_STORE_URL": f"sqlite:///{folder / 'store.db'}",
        "DROVER_NAMESPACE": fresh_namespace("p5"),
        "DROVER_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{arguments[1]} exited {done.returncode}: {done.stderr[-3000:]}")
    view: dict[str, Any] = json.loads(done.stdout)
    return view


def _host_steps(timeline: list[dict[str, Any]]) -> int:
    """Forward steps done, one per host: a StepSucceeded reports a whole batch."""
    return sum(
        len(entry["hosts"])
        for entry in timeline
        if entry["type"] == "StepSucceeded"
        and entry["step"] in FORWARD_STEPS
        and not entry["rollback"]
    )


def _seconds(timeline: list[dict[str, Any]]) -> float:
    def at(kind: str) -> datetime:
        return next(datetime.fromisoformat(e["at"]) for e in timeline if e["type"] == kind)

    return (at("ReleaseSucceeded") - at("SubmitRelease")).total_seconds()


# --- kombu alone -------------------------------------------------------------------------------


def _kombu_memory_rate(messages: int) -> float:
    """Messages/s from the first publish to the last ack, publisher and consumer threads."""
    url = EMBEDDED_BROKER_URL
    name = f"bench-p5-{uuid.uuid4().hex[:10]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    options = transport_options(url, visibility_timeout_s=300)
    with Connection(url, transport_options=options) as consuming:
        done = threading.Event()
        last_ack = [0.0]
        consumer = threading.Thread(
            target=_consume, args=(consuming, queue, messages, done, last_ack), daemon=True
        )
        consumer.start()
        time.sleep(0.1)  # the consumer's queue declared before anything is sent to it
        with Connection(url, transport_options=options) as publishing:
            first = _publish(publishing, queue, messages)
        if not done.wait(_TIMEOUT_S):
            raise RuntimeError("the in-memory consumer did not receive every message")
        consumer.join(5)
    return messages / (last_ack[0] - first)


def _publish(connection: Connection, queue: Queue, messages: int) -> float:
    producer = connection.Producer()
    first = time.perf_counter()
    for _ in range(messages):
        producer.publish(
            _BODY,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            serializer="json",
            delivery_mode=2,
            declare=[queue],
        )
    return first


def _consume(
    connection: Connection,
    queue: Queue,
    messages: int,
    done: threading.Event,
    last_ack: list[float],
) -> None:
    received = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal received
        message.ack()
        received += 1
        if received == messages:
            last_ack[0] = time.perf_counter()
            done.set()

    with connection.Consumer([queue], callbacks=[on_message], accept=["json"]):
        while not done.is_set():
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                continue


# --- the child: runtime.embedded without drover run's follower ---------------------------------


def _embedded_main(fleet_path: Path, release_path: Path) -> None:
    """Run one release through ``runtime.embedded`` and print ``release show --json``."""
    settings = Settings(
        broker_url=EMBEDDED_BROKER_URL, fleet=fleet_path, log_level="warning"
    )  # the rest (store, namespace) from DROVER_* as the parent set them
    configure_logging(settings.log_format, settings.log_level)
    fleet = load_fleet(fleet_path)
    request = load_release(release_path)
    parts = connect(settings, fleet)
    try:
        with embedded(parts):
            client = Client(parts.store, parts.bus)
            release_id = client.submit(request, actor="bench")
            client.wait(release_id, timeout_s=_TIMEOUT_S, poll_s=0.5)
        print(json.dumps(show(parts.store, release_id)))
    finally:
        parts.close()


if __name__ == "__main__":
    _embedded_main(Path(sys.argv[1]), Path(sys.argv[2]))
