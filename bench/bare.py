# kombu ships only partial annotations (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-untyped-calls=False
"""The bare stack: kombu and Celery alone, on the broker Drover uses, configured as Drover
configures them. Every other benchmark divides its Drover figure by one of these.

"As Drover configures them" is deliberate: the kombu connections get Drover's transport
options (publisher confirms on RabbitMQ), the Celery app is Drover's own
(:func:`workers.app.create_celery`: JSON, late acks, prefetch multiplier 1) and its worker
runs the threads pool, like Drover's. A ratio then measures what Drover adds on top of
the stack, not the price of choices the stack would cost anyone who made them. The
transport, though, is kombu's own: where Drover changed it for speed
(:mod:`orchestrator.redis_transport`), that is a path of Drover's, to be measured against
the stack as it comes, not given to it (the floor alone runs a worker on it, by name, to
price that path).

Four figures, each measured ``options.runs`` times:

* kombu publish/consume: messages/s through one queue, publisher and consumer each in a
  process of its own, from the first publish to the last acknowledgement;
* kombu round trip: p50 of sequential request/reply exchanges with a responder process;
* Celery no-op: tasks/s, from the first ``send_task`` to the last task's completion in a
  real worker process (the task that completes the count writes the time);
* Celery round trip: p50 of a task sent and its reply (published by the task to a queue
  the sender consumes, the way Drover's worker answers with events), one at a time.

``python -m bench.bare worker …`` is the worker process the Celery figures start.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Final

import redis
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from bench.measure import Figure, Runs, timed
from bench.options import Options
from bench.processes import WORKER_CONCURRENCY, forget_keys
from orchestrator.bus import transport_options
from workers.app import create_celery

__all__ = [
    "CELERY_TASKS",
    "DROVERS",
    "KOMBUS",
    "STORE_WRITE",
    "CeleryWorker",
    "celery_app",
    "celery_noop_rate",
    "celery_round_trip",
    "celery_worker",
    "floor_component",
    "kombu_first_message",
    "kombu_rate",
    "kombu_round_trip",
    "outcome_publisher",
    "run",
]

KOMBU_MESSAGES: Final = int(os.environ.get("BENCH_KOMBU_MESSAGES", "5000"))
CELERY_TASKS: Final = int(os.environ.get("BENCH_CELERY_TASKS", "2000"))
ROUND_TRIPS: Final = 200
# The transport a bare Celery worker consumes with: kombu's own, as the bare stack comes;
# or Drover's (orchestrator.redis_transport, its batched intake), to price that path alone.
KOMBUS: Final = "kombu"
DROVERS: Final = "drover"
TRANSPORTS: Final = (KOMBUS, DROVERS)
_WARM_UP: Final = 10  # round trips before the measured ones: connections, declarations
_PREFETCH: Final = 16  # as Drover's coordinator consumes its queues
_VISIBILITY_TIMEOUT_S: Final = 300.0  # Drover's default (DROVER_REDIS_VISIBILITY_TIMEOUT_S)
_WAIT_S: Final = 120.0
_NOOP_TASK: Final = "bench.noop"
_REPLY_TASK: Final = "bench.reply"
_FLOOR_TASK: Final = "bench.floor"
# The least a durable write is: one key set in one Lua call (Drover's store calls are
# Lua scripts or pipelines writing several keys each).
STORE_WRITE: Final = "return redis.call('SET', KEYS[1], ARGV[1])"
_ROOT: Final = Path(__file__).resolve().parents[1]
_FIRST: Final = ("first", "again")  # the sides of the first-message figure


def run(options: Options) -> list[Figure]:
    # Figures of the bare stack alone: ``drover`` is only the name of Figure's one
    # required measurement; the runner prints a figure without a counterpart unlabelled.
    return [
        Figure("bare kombu publish/consume", kombu_rate(options)),
        Figure("bare kombu round trip p50", kombu_round_trip(options)),
        Figure("bare kombu a queue's first message", *kombu_first_message(options), sides=_FIRST),
        Figure("bare celery no-op", celery_noop_rate(options)),
        Figure("bare celery round trip p50", celery_round_trip(options)),
    ]


# --- kombu ---------------------------------------------------------------------------------


def _queue(name: str) -> Queue:
    # The shape Drover gives its service queues: a direct exchange named after the queue.
    return Queue(name, exchange=Exchange(name, type="direct"), routing_key=name, durable=True)


def _connection(url: str) -> Connection:
    return Connection(url, transport_options=transport_options(url, _VISIBILITY_TIMEOUT_S))


def kombu_rate(options: Options, messages: int = KOMBU_MESSAGES) -> Runs:
    """Messages/s through one queue, publisher and consumer in processes of their own."""
    return timed(
        options.runs,
        lambda: _kombu_rate_once(options.broker_url, messages),
        "kombu publish/consume",
        "msg/s",
    )


def _kombu_rate_once(url: str, messages: int) -> float:
    # Processes, not threads: on two cores, threads would share one interpreter lock and
    # measure Python's scheduling more than the broker.
    context = multiprocessing.get_context("spawn")
    name = f"bench-bare-{uuid.uuid4().hex[:10]}.throughput"
    ready, results = context.Event(), context.Queue()
    consumer = context.Process(target=_consume, args=(url, name, messages, ready, results))
    consumer.start()
    try:
        if not ready.wait(_WAIT_S):
            raise RuntimeError("the kombu consumer did not start")
        publisher = context.Process(target=_publish, args=(url, name, messages, results))
        publisher.start()
        # Read before joining: a process exits only once what it put on the queue is read.
        # The publisher's time is the earlier of the two.
        first_publish, last_ack = sorted(float(results.get(timeout=_WAIT_S)) for _ in range(2))
        publisher.join(_WAIT_S)
    finally:
        _end(consumer)
        _delete_queue(url, name)
    return messages / (last_ack - first_publish)


def _consume(url: str, name: str, messages: int, ready: EventType, results: Any) -> None:
    received = 0
    last_ack = 0.0

    def on_message(body: Any, message: Any) -> None:
        nonlocal received, last_ack
        message.ack()
        received += 1
        last_ack = time.time()

    with (
        _connection(url) as connection,
        connection.Consumer(
            [_queue(name)], callbacks=[on_message], accept=["json"], prefetch_count=_PREFETCH
        ),
    ):
        ready.set()
        while received < messages:
            connection.drain_events(timeout=_WAIT_S)
    results.put(last_ack)


def _publish(url: str, name: str, messages: int, results: Any) -> None:
    queue = _queue(name)
    body = {"n": 0, "note": "x" * 200}  # about the size of a small Drover event
    with _connection(url) as connection:
        producer = connection.Producer()
        results.put(time.time())
        for n in range(messages):
            body["n"] = n
            producer.publish(
                body,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],  # once per channel: kombu caches it
                serializer="json",
                delivery_mode=2,
            )


def kombu_round_trip(options: Options, trips: int = ROUND_TRIPS) -> Runs:
    """p50 (ms) of sequential request/reply exchanges with a responder process."""
    return timed(
        options.runs,
        lambda: _kombu_round_trip_once(options.broker_url, trips),
        "kombu round trip p50",
        "ms",
    )


def _kombu_round_trip_once(url: str, trips: int) -> float:
    with _responder(url, 1) as (ask, requests):
        durations = [ask(requests[0], n) for n in range(_WARM_UP + trips)]
    return _p50_ms(durations[_WARM_UP:])


def kombu_first_message(options: Options, queues: int = ROUND_TRIPS) -> tuple[Runs, Runs]:
    """p50 (ms) of request/reply exchanges each sent to a queue that has never held a
    message, and of the same exchanges again, one to each of those queues in turn.

    What a fleet's first release pays on each service's queue, and its later ones do not
    (see :meth:`bench.processes.Cluster.first_and_again`).
    """
    first: list[float] = []
    again: list[float] = []
    for _ in range(options.runs):
        with _responder(options.broker_url, queues + 1) as (ask, requests):
            *measured, warm = requests  # the reply queue's first messages go through ``warm``
            for n in range(_WARM_UP):
                ask(warm, -1 - n)
            durations = [ask(request, n) for n, request in enumerate(measured * 2)]
        first.append(_p50_ms(durations[:queues]))
        again.append(_p50_ms(durations[queues:]))
    return (
        Runs("kombu round trip p50, a queue's first message", "ms", tuple(first)),
        Runs("kombu round trip p50, the same queues again", "ms", tuple(again)),
    )


Ask = Callable[[Queue, int], float]


@contextmanager
def _responder(url: str, queues: int) -> Iterator[tuple[Ask, list[Queue]]]:
    """A responder process answering on ``queues`` request queues made for it, and a way
    to ask one of them and wait for the answer (seconds); every queue deleted after."""
    context = multiprocessing.get_context("spawn")
    prefix = f"bench-bare-{uuid.uuid4().hex[:10]}"
    requests = [f"{prefix}.request{i}" for i in range(queues)]
    reply = f"{prefix}.reply"
    ready = context.Event()
    responder = context.Process(target=_respond, args=(url, requests, reply, ready))
    responder.start()
    try:
        if not ready.wait(_WAIT_S):
            raise RuntimeError("the kombu responder did not start")
        with _connection(url) as connection, _Replies(connection, reply) as replies:
            producer = connection.Producer()
            queues_asked = [_queue(name) for name in requests]
            for queue in queues_asked:  # declared before, as Drover declares its fleet's
                producer.maybe_declare(queue)
            yield (lambda request, n: replies.ask(producer, request, n)), queues_asked
            producer.publish({"stop": True}, **_route(_queue(requests[0])))
    finally:
        _end(responder)
        for name in (*requests, reply):
            _delete_queue(url, name)


def _route(queue: Queue) -> dict[str, Any]:
    return {
        "exchange": queue.exchange,
        "routing_key": queue.routing_key,
        "declare": [queue],
        "serializer": "json",
    }


def _respond(url: str, requests: Sequence[str], reply: str, ready: EventType) -> None:
    stopped = False

    with _connection(url) as connection:
        producer = connection.Producer()

        def on_message(body: Any, message: Any) -> None:
            nonlocal stopped
            if body.get("stop"):
                stopped = True
            else:
                producer.publish(body, **_route(_queue(reply)))
            message.ack()

        with connection.Consumer(
            [_queue(name) for name in requests],
            callbacks=[on_message],
            accept=["json"],
            prefetch_count=_PREFETCH,
        ):
            ready.set()
            while not stopped:
                connection.drain_events(timeout=_WAIT_S)


class _Replies:
    """A consumer of one reply queue, waiting for one numbered answer at a time."""

    def __init__(self, connection: Connection, name: str):
        self._connection = connection
        self._answered: set[int] = set()
        self._consumer = connection.Consumer(
            [_queue(name)], callbacks=[self._on_message], accept=["json"]
        )

    def __enter__(self) -> _Replies:
        self._consumer.consume()
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.cancel()

    def _on_message(self, body: Any, message: Any) -> None:
        self._answered.add(int(body["n"]))
        message.ack()

    def ask(self, producer: Any, request: Queue, n: int) -> float:
        """Publish request ``n`` and wait for its reply; seconds between the two."""
        started = time.perf_counter()
        producer.publish({"n": n}, **_route(request))
        self.wait(n)
        return time.perf_counter() - started

    def wait(self, n: int) -> None:
        while n not in self._answered:
            self._connection.drain_events(timeout=_WAIT_S)


def _p50_ms(durations: list[float]) -> float:
    return statistics.median(durations) * 1000


def _end(process: Any) -> None:
    process.join(5)
    if process.is_alive():
        process.terminate()
        process.join(5)


def _delete_queue(url: str, name: str) -> None:
    """A queue and its exchange (named alike), on either broker."""
    if url.startswith("redis"):
        forget_keys(url, name)  # the list and kombu's binding keys: all named after it
        return
    with _connection(url) as connection:
        channel = connection.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)
        channel.close()


# --- Celery --------------------------------------------------------------------------------


class CeleryWorker:
    """A bare Celery worker process serving one queue or many, and an app to send it tasks.

    Its tasks: a no-op (the count every rate is read from), a reply, and a *floor*
    component (``bench.floor``): a number of store writes, then an outcome published,
    the least a Drover component does (see :mod:`bench.floor`). Tasks go to the queues
    in turn, as a wide release's commands go to the queues of its services.
    """

    def __init__(self, app: Celery, queues: Sequence[str], namespace: str, url: str, pid: int):
        self.app = app
        self.pid = pid  # the worker process's, to read its processor time by
        self.queues = tuple(queues)
        self.namespace = namespace
        self.redis = redis.Redis.from_url(url)
        self._store_write = self.redis.register_script(STORE_WRITE)

    def rate(self, tasks: int, store_calls: int | None = None) -> float:
        """Tasks/s from the first ``send_task`` to the last completion: no-ops, or floor
        components making ``store_calls`` store writes each."""
        counter = f"{self.namespace}:count:{uuid.uuid4().hex}"
        outcomes = f"{self.namespace}.outcomes"
        started = time.time()
        for n, queue in zip(range(tasks), itertools.cycle(self.queues)):
            if store_calls is None:
                self.app.send_task(_NOOP_TASK, args=[counter, tasks], queue=queue)
            else:
                arguments = [n, outcomes, store_calls, counter, tasks]
                self.app.send_task(_FLOOR_TASK, args=arguments, queue=queue)
        finished = _wait_for_key(self.redis, f"{counter}:done")
        return tasks / (finished - started)

    def round_trip(
        self, url: str, trips: int, store_calls: int | None = None, sender_calls: int = 0
    ) -> float:
        """p50 (ms) of a task sent and its reply received, one at a time: a reply task, or
        a floor component making ``store_calls`` writes, with ``sender_calls`` writes by
        the sender before each (what a coordinator records of an event)."""
        reply = f"{self.namespace}.reply.{uuid.uuid4().hex[:8]}"
        durations = []
        with _connection(url) as connection, _Replies(connection, reply) as replies:
            for n in range(_WARM_UP + trips):
                started = time.perf_counter()
                for call in range(sender_calls):
                    self._store_write(keys=[f"{reply}:sent"], args=[call])
                if store_calls is None:
                    self.app.send_task(_REPLY_TASK, args=[reply, n], queue=self.queues[0])
                else:
                    arguments = [n, reply, store_calls, None, 0]
                    self.app.send_task(_FLOOR_TASK, args=arguments, queue=self.queues[0])
                replies.wait(n)
                durations.append(time.perf_counter() - started)
        _delete_queue(url, reply)
        return _p50_ms(durations[_WARM_UP:])


def celery_noop_rate(
    options: Options, concurrency: int | None = None, tasks: int = CELERY_TASKS
) -> Runs:
    """Tasks/s of a no-op task through one queue and a real worker process.

    ``concurrency`` defaults to Drover's worker default, so that the figure stands beside
    a Drover worker with the same number of threads.
    """
    with celery_worker(options, concurrency) as worker:
        return timed(options.runs, lambda: worker.rate(tasks), "celery no-op", "task/s")


def celery_round_trip(
    options: Options, concurrency: int | None = None, trips: int = ROUND_TRIPS
) -> Runs:
    """p50 (ms) of one task sent and its reply received, one at a time."""
    with celery_worker(options, concurrency) as worker:
        return timed(
            options.runs,
            lambda: worker.round_trip(options.broker_url, trips),
            "celery round trip p50",
            "ms",
        )


@contextmanager
def celery_worker(
    options: Options, concurrency: int | None = None, queues: int = 1, transport: str = KOMBUS
) -> Iterator[CeleryWorker]:
    """A bare Celery worker process on ``queues`` queues, up and consuming, and gone after;
    its connection on kombu's own transport, or on Drover's (``transport``)."""
    namespace = f"bench-bare-{uuid.uuid4().hex[:10]}"
    app = celery_app(options.broker_url, namespace)
    threads = concurrency or WORKER_CONCURRENCY
    where = [options.broker_url, options.redis_url, namespace]
    arguments = [*where, str(queues), str(threads), transport]
    # Its output (Celery's warnings, its shutdown line) goes to a file, shown if it fails.
    log = tempfile.NamedTemporaryFile(prefix="bench-celery-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare", "worker", *arguments],
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = CeleryWorker(
        app, _queue_names(namespace, queues), namespace, options.redis_url, process.pid
    )
    try:
        try:
            worker.rate(len(worker.queues))  # returns once every queue is consumed: it is up
        except TimeoutError as exc:
            raise RuntimeError(f"the bare Celery worker did not start: {_tail(log.name)}") from exc
        yield worker
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        app.close()
        worker.redis.close()
        _forget(options, namespace, [*worker.queues, f"{namespace}.outcomes"])


def celery_app(broker_url: str, namespace: str, transport: str = KOMBUS) -> Celery:
    """Drover's Celery app, on kombu's own transport (see the module's docstring) unless
    told to keep Drover's."""
    app = create_celery(broker_url, namespace, _VISIBILITY_TIMEOUT_S)
    if transport == KOMBUS:
        app.conf.broker_transport = None
    return app


def _queue_names(namespace: str, count: int) -> list[str]:
    if count == 1:
        return [f"{namespace}.tasks"]
    return [f"{namespace}.tasks.{i:05d}" for i in range(count)]


def _tail(path: str) -> str:
    return Path(path).read_text(errors="replace")[-2000:]


def _wait_for_key(client: redis.Redis, key: str) -> float:
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        value = client.get(key)
        if value is not None:
            return float(value)
        time.sleep(0.02)
    raise TimeoutError(f"the bare Celery worker did not finish ({key})")


def _forget(options: Options, namespace: str, queues: Sequence[str]) -> None:
    forget_keys(options.redis_url, namespace)
    if options.broker == "rabbitmq":
        for queue in queues:
            _delete_queue(options.broker_url, queue)


# --- the worker process --------------------------------------------------------------------


def outcome_publisher(app: Celery) -> Callable[[str, int], None]:
    """Publish ``{"n": n}`` to a queue named ``name``, as a bare worker says it is done."""

    def publish(name: str, n: int) -> None:
        with app.producer_or_acquire() as producer:
            producer.publish({"n": n}, **_route(_queue(name)))

    return publish


def floor_component(
    store_write: Any,
    publish: Callable[[str, int], None],
    *,
    key: str,
    outcome: str,
    n: int,
    calls: int,
) -> None:
    """The least a one-host component does (:mod:`bench.floor`): ``calls`` durable writes
    (``store_write``, a registered :data:`STORE_WRITE` script), then its outcome published."""
    for call in range(calls):
        store_write(keys=[key], args=[call])
    publish(outcome, n)


def _worker_main(
    broker_url: str, redis_url: str, namespace: str, queues: str, threads: str, *, transport: str
) -> None:
    """A Celery worker with Drover's configuration and three tasks of its own."""
    app = celery_app(broker_url, namespace, transport)
    store = redis.Redis.from_url(redis_url)
    store_write = store.register_script(STORE_WRITE)

    def count(counter: str, total: int) -> None:
        # The task that brings the count to the total writes the time: the last
        # completion, whatever order the threads finish in.
        if store.incr(counter) == total:
            store.set(f"{counter}:done", repr(time.time()))

    publish = outcome_publisher(app)

    @app.task(name=_NOOP_TASK)  # type: ignore[untyped-decorator]
    def noop(counter: str, total: int) -> None:
        count(counter, total)

    @app.task(name=_REPLY_TASK)  # type: ignore[untyped-decorator]
    def reply(name: str, n: int) -> None:
        publish(name, n)

    @app.task(name=_FLOOR_TASK)  # type: ignore[untyped-decorator]
    def floor(n: int, outcome: str, calls: int, counter: str | None, total: int) -> None:
        floor_component(
            store_write, publish, key=f"{namespace}:floor:{n}", outcome=outcome, n=n, calls=calls
        )
        if counter is not None:
            count(counter, total)

    app.Worker(
        # Unique, and under the namespace: its pidbox keys go with the namespace's.
        hostname=f"{namespace}@{socket.gethostname()}",
        pool="threads",
        concurrency=int(threads),
        queues=_queue_names(namespace, int(queues)),
        loglevel="WARNING",
        without_mingle=True,
        without_gossip=True,
        quiet=True,
    ).start()


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"] or len(sys.argv) != 8 or sys.argv[7] not in TRANSPORTS:
        sys.exit(
            "usage: python -m bench.bare worker BROKER_URL REDIS_URL NAMESPACE QUEUES THREADS"
            f" {'|'.join(TRANSPORTS)}"
        )
    _worker_main(*sys.argv[2:7], transport=sys.argv[7])
