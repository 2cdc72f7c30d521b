"""The message bus: kombu topology, publishing, and consuming with reconnection.

Topology, for a namespace ``ns`` (``drover`` unless configured):

* ``ns.commands`` — a queue the coordinator consumes: release submissions.
* ``ns.svc.<service>`` — one queue per service, consumed by that service's Celery
  workers: ``DeployComponent`` and ``RollbackComponent`` as Celery tasks.
* ``ns.events`` — a topic exchange every event the saga decides on or announces is
  published to with the routing key ``<Type>.<release id>``; ``ns.coordinator`` binds
  all of it, and any other listener can bind what it wants with a queue of its own.
* ``ns.progress`` — a topic exchange for the workers' step reports, in batches under
  ``Progress.<release id>``, for whoever wants them live, a few times a second
  (:mod:`orchestrator.feed`); no Drover queue binds it (the reports are recorded in the
  store, where the coordinator reads them when it must).

Every body is the JSON of one :class:`~orchestrator.contract.Envelope`, or of a batch
of them (a JSON array, :func:`~orchestrator.contract.encode_batch`).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue, maybe_delivery_mode
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.messaging import Producer
from kombu.mixins import ConsumerMixin
from kombu.serialization import dumps
from kombu.transport.base import Transport

from orchestrator import memory_transport, redis_transport
from orchestrator.contract import (
    DeployComponent,
    Envelope,
    RollbackComponent,
    ToggleFlag,
    encode_batch,
)
from orchestrator.feed import ProgressFeed
from orchestrator.metrics import Metrics, NoMetrics
from orchestrator.observability import get_logger
from orchestrator.settings import redacted
from orchestrator.store import Queued, Routed

__all__ = [
    "DEPLOY_TASK",
    "ROLLBACK_TASK",
    "TOGGLE_TASK",
    "BrokerUnavailable",
    "Bus",
    "BusDrills",
    "Delivery",
    "Topology",
    "transport_options",
]

log = get_logger(__name__)

# The type in the headers and routing key of a batch of a worker's step reports.
PROGRESS: Final = "Progress"
DEPLOY_TASK: Final = "drover.deploy_component"
ROLLBACK_TASK: Final = "drover.rollback_component"
TOGGLE_TASK: Final = "drover.toggle_flag"
# A worker's commands go to their service's queue as Celery tasks, under these names.
_TASKS: Final[dict[type, str]] = {
    DeployComponent: DEPLOY_TASK,
    RollbackComponent: ROLLBACK_TASK,
    ToggleFlag: TOGGLE_TASK,
}

# Every publish is bounded: without a timeout, a publish (or the wait for RabbitMQ's
# confirm) on a connection that broke under it can block its thread for good, and the
# coordinator's one thread with it. A timeout is retried like any connection error.
_PUBLISH_TIMEOUT_S: Final = 10.0
# Threads publishing at once, each with a producer and a connection of its own; more wait.
_PUBLISHERS_AT_MOST: Final = 32
# How long a consumer waits for a message before it looks up (ticks, stop requests).
_WAIT_S: Final = 1.0
_RETRY_POLICY: Final = {
    "max_retries": 10,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 3.0,
}


@dataclass(frozen=True)
class Topology:
    """Every exchange and queue name Drover uses, derived from one namespace."""

    namespace: str

    @property
    def commands_exchange(self) -> Exchange:
        return Exchange(f"{self.namespace}.commands", type="direct", durable=True)

    @property
    def commands_queue(self) -> Queue:
        return Queue(
            f"{self.namespace}.commands",
            exchange=self.commands_exchange,
            routing_key="commands",
            durable=True,
        )

    @property
    def events_exchange(self) -> Exchange:
        return Exchange(f"{self.namespace}.events", type="topic", durable=True)

    @property
    def progress_exchange(self) -> Exchange:
        return Exchange(f"{self.namespace}.progress", type="topic", durable=True)

    @property
    def coordinator_queue(self) -> Queue:
        return Queue(
            f"{self.namespace}.coordinator",
            exchange=self.events_exchange,
            routing_key="#",
            durable=True,
        )

    def service_queue(self, service: str) -> Queue:
        # The same shape Celery gives a queue it creates itself (exchange and routing key
        # named after the queue), so workers and publishers always agree on it.
        name = f"{self.namespace}.svc.{service}"
        return Queue(name, exchange=Exchange(name, type="direct"), routing_key=name, durable=True)


class BrokerUnavailable(Exception):
    """The broker could not be reached (after retrying); nothing was published."""


@contextmanager
def _broker_errors(broker_url: str) -> Iterator[None]:
    # kombu and py-amqp/redis raise their own errors; callers above the bus only need to
    # know that the broker is away.
    try:
        yield
    except (KombuOperationalError, OSError) as exc:
        raise BrokerUnavailable(f"{redacted(broker_url)}: {exc}") from exc


@dataclass(frozen=True)
class BusDrills:
    """Misbehaviour on purpose, to prove that consumers do not depend on good manners."""

    copies: int = 1  # publish every message this many times
    reorder_events_ms: int = 0  # hold each event back up to this long: they arrive shuffled


@dataclass(frozen=True)
class Delivery:
    """One message taken off a queue, with what must be done to settle it."""

    body: bytes
    queue: str
    ack: Callable[[], None]
    requeue: Callable[[], None]
    sent_at: float | None = None  # epoch seconds, from the publisher's drover_sent_at header


class Bus:
    """Publishes envelopes where they belong and runs consumers; safe to share by threads."""

    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        celery: Celery,
        *,
        visibility_timeout_s: float,
        progress_every_s: float,
        drills: BusDrills | None = None,
        metrics: Metrics | None = None,
    ):
        self.broker_url = broker_url
        self.topology = topology
        self.celery = celery
        self._drills = drills or BusDrills()
        # Every event is counted where it is published, once: by the process that made it.
        self.metrics: Metrics = metrics or NoMetrics()
        self._jitter = random.Random()  # drills only: nothing here is security-sensitive
        self._connection = Connection(
            broker_url,
            transport=transport_for(broker_url),
            transport_options=transport_options(broker_url, visibility_timeout_s),
        )
        self._publishers = _KeptPublishers(self._connection, _PUBLISHERS_AT_MOST)
        self._declared = False
        self._declare_lock = threading.Lock()
        self._feed = ProgressFeed(self._publish_progress_now, progress_every_s)

    def declare(self) -> None:
        """Create the exchanges and the coordinator's queues; safe to repeat."""
        with self._declare_lock:
            if self._declared:
                return
            with _broker_errors(self.broker_url), self._connection.clone() as connection:
                channel = connection.default_channel
                for queue in (self.topology.commands_queue, self.topology.coordinator_queue):
                    queue(channel).declare()
            self._declared = True

    def declare_service_queues(self, services: Sequence[str]) -> None:
        """Declare the queues of ``services`` on the connection tasks are sent by.

        A command to a service declares its queue on the way (a command must never meet
        an exchange with nothing bound to it), which kombu does once per connection and
        again after a reconnection; declaring the fleet's queues up front takes that
        round trip off each service's first command, and keeps each queue bound for it.
        """
        with _broker_errors(self.broker_url), self._publishers.acquire() as publisher:
            for service in services:
                publisher.producer.maybe_declare(self._service_queue(publisher, service))

    def publish(self, message: Envelope) -> None:
        """Send one message to where its type goes.

        Retries while the broker is away, then raises :class:`BrokerUnavailable`.
        """
        if type(message.payload) in _TASKS:
            with _broker_errors(self.broker_url):
                for _ in range(self._drills.copies):
                    self._send_task(message)
        elif message.is_command:  # submit, approve, ...
            self._publish_as_drilled(message, self.topology.commands_exchange, "commands")
        else:
            self._publish_as_drilled(message, self.topology.events_exchange, _topic(message))
        self.metrics.record(message)

    def publish_progress(self, reports: Sequence[Envelope]) -> None:
        """Send a worker's step reports on one release to listeners, with the others the
        live feed gathers until its next message (never raises for the broker's sake)."""
        if not reports:
            return
        if any(r.is_command for r in reports) or len({r.release_id for r in reports}) > 1:
            raise ValueError("progress reports are events of one release")
        self._feed.offer(reports)
        for report in reports:
            self.metrics.record(report)

    def _publish_progress_now(self, reports: Sequence[Envelope]) -> None:
        routing_key = f"{PROGRESS}.{reports[0].release_id}"
        self._publish_as_drilled(reports, self.topology.progress_exchange, routing_key)

    def _publish_as_drilled(
        self, message: Envelope | Sequence[Envelope], exchange: Exchange, routing_key: str
    ) -> None:
        """Publish as many times as the drills say, events held back by up to their delay."""
        event = not isinstance(message, Envelope) or not message.is_command
        with _broker_errors(self.broker_url):
            for _ in range(self._drills.copies):
                if event and self._drills.reorder_events_ms:
                    delay_s = self._jitter.uniform(0, self._drills.reorder_events_ms / 1000)
                    args = [message, exchange, routing_key]
                    threading.Timer(delay_s, self._publish_late, args).start()
                else:
                    self._publish(message, exchange, routing_key)

    def _publish_late(
        self, message: Envelope | Sequence[Envelope], exchange: Exchange, routing_key: str
    ) -> None:
        try:
            self._publish(message, exchange, routing_key)
        except Exception:
            log.exception("a drill's delayed event could not be published")

    def _publish(
        self, message: Envelope | Sequence[Envelope], exchange: Exchange, routing_key: str
    ) -> None:
        self.declare()
        if isinstance(message, Envelope):
            body, headers = message.encode(), _headers(message)
        else:
            body, headers = encode_batch(message), _headers(message[0], batch=len(message))
        with self._publishers.acquire() as publisher:
            bound = publisher.bound(f"exchange {exchange.name}", lambda: exchange)
            publisher.producer.publish(
                body,
                exchange=bound,
                routing_key=routing_key,
                content_type=_CONTENT_TYPE,
                content_encoding=_CONTENT_ENCODING,
                delivery_mode=_PERSISTENT,
                headers=headers,
                # kombu's virtual transports (Redis, memory) route by the exchange type
                # this connection has seen declared, and would treat an undeclared topic
                # exchange as direct and drop the message. Declaring is cached per channel.
                declare=[bound],
                **_PUBLISH_LIMITS,
            )

    def routed(self, message: Envelope) -> Routed | None:
        """``message``, an event, as the broker keeps it where the events exchange routes
        it once published (:meth:`publish`), for a store that shares the broker's Redis to
        push there itself, in the step that records it (a worker's outcome). It is then
        not published, and counted as published by whoever pushed it
        (``metrics.record``). None for what only a publish sends: commands, a broker other
        than Redis through Drover's transport, drills, a route kombu's way must take.
        Raises :class:`BrokerUnavailable` if the broker cannot be asked how it keeps the
        message."""
        if message.is_command or self._drills != BusDrills():
            return None
        self.declare()
        exchange = self.topology.events_exchange
        with self._on_drovers_redis() as on_redis:
            if on_redis is None:
                return None
            publisher, channel = on_redis
            bound = publisher.bound(f"exchange {exchange.name}", lambda: exchange)
            publisher.producer.maybe_declare(bound)  # as the publish declares it on the way
            # As kombu's producer makes what it publishes (see _publish), then its channel.
            made = channel.prepare_message(
                message.encode(),
                0,
                _CONTENT_TYPE,
                _CONTENT_ENCODING,
                _headers(message),
                {"delivery_mode": _PERSISTENT},
            )
            routed = channel.as_routed(made, exchange.name, _topic(message))
        if routed is None:
            return None
        bindings_key, bindings, list_keys, raw = routed
        return Routed(bindings_key, bindings, tuple(list_keys), raw)

    def queued(self, message: Envelope) -> Queued | None:
        """``message`` as the broker keeps it in its queue once published (:meth:`publish`),
        for a store that shares the broker's Redis to push there itself, in the commit that
        decided it. None for what only a publish sends: events and batches, a broker other
        than Redis through Drover's transport, drills. Raises :class:`BrokerUnavailable` if
        the broker cannot be asked how it keeps the message."""
        if type(message.payload) not in _TASKS or self._drills.copies != 1:
            return None
        task = self._task_message(message)
        with self._on_drovers_redis() as on_redis:
            if on_redis is None:
                return None
            publisher, channel = on_redis
            queue = self._service_queue(publisher, task.service)
            publisher.producer.maybe_declare(queue)  # as the publish declares it on the way
            # As kombu's producer makes what it publishes (see _send_task), then its channel.
            content_type, content_encoding, body = dumps(task.body, serializer=task.serializer)
            properties = {**task.properties, "delivery_mode": task.delivery_mode}
            made = channel.prepare_message(
                body, 0, content_type, content_encoding, task.headers, properties
            )
            channel._inplace_augment_message(made, "", queue.name)
            queued = channel.as_queued(queue.name, made)
        return None if queued is None else Queued(*queued)

    @contextmanager
    def _on_drovers_redis(self) -> Iterator[tuple[_Publisher, redis_transport.Channel] | None]:
        """A publisher and its channel, where the broker is Redis through Drover's
        transport (None elsewhere), the broker's errors raised as BrokerUnavailable."""
        with (
            _broker_errors(self.broker_url),
            self._publishers.acquire() as publisher,
            # As send_task does: the transport's own errors (redis-py's) become kombu's.
            publisher.producer.connection._reraise_as_library_errors(),
        ):
            channel = publisher.producer.channel
            yield (publisher, channel) if isinstance(channel, redis_transport.Channel) else None

    def _send_task(self, message: Envelope) -> None:
        """Send a command as the Celery task its service's workers run.

        The message is the one Celery's ``send_task`` makes: made by Celery
        (``amqp.create_task_message``), then published as ``send_task`` publishes a task
        to a queue of its own (with kombu's producer, to the default exchange under the
        queue's name, the queue declared on the way). What ``send_task`` does besides
        (looking the task up among this process's own, routing, expiry, a parent task, a
        result to wait for, its signals before and after a publish, its events) never
        applies to a command, and was half of what sending one cost.
        """
        task = self._task_message(message)
        with (
            self._publishers.acquire() as publisher,
            # As send_task does: the transport's own errors (redis-py's) become kombu's.
            publisher.producer.connection._reraise_as_library_errors(),
        ):
            queue = self._service_queue(publisher, task.service)
            publisher.producer.publish(
                task.body,
                exchange="",
                routing_key=queue.name,
                serializer=task.serializer,
                delivery_mode=task.delivery_mode,
                declare=[queue],
                headers=task.headers,
                **task.properties,
                **_PUBLISH_LIMITS,
            )

    def _task_message(self, message: Envelope) -> _TaskMessage:
        """The Celery task message of a worker's command."""
        # What Celery shows of a task's arguments in its events and monitors: left to
        # itself it writes a safe repr of the whole message, half of what sending a
        # command costs. What the message is says as much, in a few words.
        shown = {
            "argsrepr": f"({message.type} {message.id} of release {message.release_id},)",
            "kwargsrepr": "{}",
        }
        conf = self.celery.conf
        task = self.celery.amqp.create_task_message(
            message.id,
            _TASKS[type(message.payload)],
            [message.to_wire()],
            {},
            reply_to=self.celery.thread_oid,
            create_sent_event=False,  # Drover's Celery sends no task events
            ignore_result=None,  # as send_task says it: the workers' setting decides
            **shown,
        )
        return _TaskMessage(
            service=getattr(message.payload, "service", ""),
            body=task.body,
            headers={**task.headers, **_headers(message)},
            # send_task puts what is shown in the message's properties too
            properties={**task.properties, **shown},
            serializer=conf.task_serializer,
            delivery_mode=maybe_delivery_mode(conf.task_default_delivery_mode),
        )

    def _service_queue(self, publisher: _Publisher, service: str) -> Queue:
        make = functools.partial(self.topology.service_queue, service)
        return publisher.bound(f"queue of {service}", make)

    def consume(
        self,
        queues: list[Queue],
        handle: Callable[[Delivery], None],
        stop: threading.Event,
        *,
        prefetch: int = 16,
        on_ready: Callable[[], None] | None = None,
        tick: Callable[[], None] | None = None,
        on_idle: Callable[[float], None] | None = None,
    ) -> None:
        """Deliver messages to ``handle`` until ``stop`` is set, reconnecting as needed.

        ``tick`` is called about once a second while consuming, for periodic work;
        ``on_idle(until)`` whenever a wait for messages brought none: every message sent
        to the queues before ``until`` (epoch seconds) has been handed to ``handle``.
        """
        consumer = _Consumer(
            self._connection.clone(),
            queues,
            handle,
            stop,
            prefetch=prefetch,
            on_ready=on_ready,
            tick=tick,
            on_idle=on_idle,
        )
        try:
            consumer.run(safety_interval=_WAIT_S)
        finally:
            consumer.connection.release()

    def queue_depths(self, queues: list[Queue]) -> list[dict[str, Any]]:
        """Ready messages and consumers per queue, by passive declare (no queue is created)."""
        rows = []
        with _broker_errors(self.broker_url), self._connection.clone() as connection:
            for queue in queues:
                try:
                    channel = connection.channel()
                    _, ready, consumers = queue.bind(channel).queue_declare(passive=True)
                    channel.close()
                except connection.channel_errors:  # not declared yet: nothing in it
                    ready, consumers = 0, 0
                # In-flight messages are not part of a passive declare's answer.
                row = {"name": queue.name, "ready": ready, "unacked": None, "consumers": consumers}
                rows.append(row)
        return rows

    def close(self) -> None:
        self._feed.close()
        self._publishers.close()
        self._connection.release()
        self.metrics.close()


_Entity = TypeVar("_Entity", Queue, Exchange)


@dataclass(frozen=True)
class _TaskMessage:
    """A Celery task message, as ``send_task`` would publish it, and the service whose
    queue it goes to."""

    service: str
    body: tuple[Any, ...]
    headers: dict[str, Any]
    properties: dict[str, Any]
    serializer: str
    delivery_mode: int


class _Publisher:
    """A producer on a connection of its own, and the queues and exchanges it has bound."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.producer = Producer(connection)  # its channel is made when first used
        self._bound: dict[str, Any] = {}

    def bound(self, key: str, make: Callable[[], _Entity]) -> _Entity:
        """The queue or exchange a publish declares on the way, bound to the producer's
        channel and kept under ``key`` until that changes (kombu's ``ensure`` gives the
        producer a new one after a lost connection).

        kombu, before it finds an entity among those it has declared, copies one not
        bound to a channel to bind it (a queue with its exchange and binding): a third of
        what sending a command cost. ``make`` is called only when it must be bound anew.
        """
        channel = self.producer.channel
        bound = self._bound.get(key)
        if bound is None or bound.channel is not channel:
            bound = self._bound[key] = make().bind(channel)
        return bound  # type: ignore[no-any-return]  # kombu's bind is not annotated


class _KeptPublishers:
    """Publishers kept, each bound to its connection, in a stack: one per thread
    publishing at a time, at most ``limit`` (more wait for one to be put back).

    kombu's pool of producers hands each publish a producer and a connection from two
    pools, binds the producer to the connection's channel anew and gives both back
    after: a sixth of what an event's publish cost (676,000 instructions, 565,000 with
    the publisher kept; docs/performance.md, change 50). A publisher kept is bound once,
    and the publish itself is kombu's as before (its retries, its reconnection, its
    confirms). Closed with the bus.
    """

    def __init__(self, connection: Connection, limit: int):
        self._connection = connection
        self._room = threading.BoundedSemaphore(limit)
        self._idle: list[_Publisher] = []
        self._made: list[_Publisher] = []
        self._lock = threading.Lock()  # over _made, for close

    @contextmanager
    def acquire(self) -> Iterator[_Publisher]:
        with self._room:
            try:
                publisher = self._idle.pop()
            except IndexError:
                publisher = self._make()
            try:
                yield publisher
            finally:
                self._idle.append(publisher)

    def _make(self) -> _Publisher:
        publisher = _Publisher(self._connection.clone())
        with self._lock:
            self._made.append(publisher)
        return publisher

    def close(self) -> None:
        with self._lock:
            made, self._made, self._idle = self._made, [], []
        for publisher in made:
            publisher.connection.release()


_CONTENT_TYPE: Final = "application/json"
_CONTENT_ENCODING: Final = "utf-8"
_PERSISTENT: Final = 2  # AMQP's delivery mode of a message written to disk
_PUBLISH_LIMITS: Final[dict[str, Any]] = {
    "timeout": _PUBLISH_TIMEOUT_S,
    "confirm_timeout": _PUBLISH_TIMEOUT_S,
    "retry": True,
    "retry_policy": _RETRY_POLICY,
}


def transport_for(broker_url: str) -> type[Transport] | None:
    """The kombu transport Drover's connections (and Celery's) use for ``broker_url``:
    Drover's for plain Redis and in-memory, None (kombu's choice by the URL's scheme)
    otherwise (RabbitMQ; TLS and Sentinel, which kombu sets up from the URL's scheme)."""
    if broker_url.startswith("redis://"):
        return redis_transport.Transport
    if broker_url.startswith("memory://"):
        return memory_transport.Transport
    return None


def transport_options(broker_url: str, visibility_timeout_s: float) -> dict[str, Any]:
    """kombu transport options for a broker, shared by Drover's own connections and Celery's."""
    if broker_url.startswith("amqp"):
        return {"confirm_publish": True}  # a publish returns only once the broker has it
    if broker_url.startswith("memory"):
        # kombu's in-memory transport polls: its default of once a second would put a
        # second between every step of a release. Drover's waits for a message, at most
        # this long before it looks again.
        return {"polling_interval": 0.005}
    # Redis: a message taken but not acknowledged is handed out again after the
    # visibility timeout (kombu's default: an hour), by a sweep that kombu runs only
    # every unacked_restore_interval x unacked_restore_throttle seconds (10 x 10 by
    # default). Both together bound how late a dead process's message is taken over.
    # Drover sends no priorities, and each priority step kombu keeps is one more list per
    # queue in every BRPOP: a worker serving a fleet of 1,000 services blocked on 4,000
    # keys per message before (P1 in docs/performance.md: 40% more components/s).
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1.0, visibility_timeout_s / 4),
        "unacked_restore_throttle": 1,
        "priority_steps": [0],
    }


def _topic(event: Envelope) -> str:
    """The routing key of an event on the events exchange."""
    return f"{event.type}.{event.release_id}"


def _headers(message: Envelope, batch: int | None = None) -> dict[str, Any]:
    # Carried outside the body so that logs, queue tools and age measurements can read
    # them without parsing the payload. A batch is named by its first message.
    headers = {
        "drover_release_id": message.release_id,
        "drover_message_id": message.id,
        "drover_type": message.type if batch is None else PROGRESS,
        "drover_sent_at": time.time(),
    }
    return headers if batch is None else {**headers, "drover_batch": batch}


def _sent_at(headers: object) -> float | None:
    sent_at = headers.get("drover_sent_at") if isinstance(headers, dict) else None
    return float(sent_at) if isinstance(sent_at, int | float) else None


class _Consumer(ConsumerMixin):
    def __init__(
        self,
        connection: Connection,
        queues: list[Queue],
        handle: Callable[[Delivery], None],
        stop: threading.Event,
        *,
        prefetch: int,
        on_ready: Callable[[], None] | None,
        tick: Callable[[], None] | None,
        on_idle: Callable[[float], None] | None,
    ):
        self.connection = connection
        self._tick = tick
        self._next_tick = 0.0
        self._on_idle = on_idle
        # The mixin calls on_iteration before each wait for messages: a wait that handed
        # over no message between two calls timed out on empty queues.
        self._waited = False
        self._handled = False
        self._wait_started = 0.0
        self._queues = queues
        self._handle = handle
        self._stop = stop
        self._prefetch = prefetch
        self._on_ready = on_ready

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self._stop.set()

    def get_consumers(self, consumer_class: Any, channel: Any) -> list[Any]:
        # One consumer per queue, so that every delivery knows which queue it came from.
        consumers = [
            consumer_class(
                queues=[queue],
                on_message=functools.partial(self._on_message, queue.name),
                accept=["json"],
                no_ack=False,
            )
            for queue in self._queues
        ]
        for consumer in consumers:
            consumer.qos(prefetch_count=self._prefetch)
        return consumers

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **_: Any) -> None:
        self._waited = False  # a new connection: no wait on it has ended yet
        if self._on_ready is not None:
            self._on_ready()

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        log.warning("broker unreachable, retrying", error=str(exc), retry_in_s=interval)

    def _on_message(self, queue: str, message: Any) -> None:
        self._handled = True
        self._handle(
            Delivery(
                body=message.body if isinstance(message.body, bytes) else message.body.encode(),
                queue=queue,
                ack=message.ack,
                requeue=message.requeue,
                sent_at=_sent_at(message.headers),
            )
        )

    def on_iteration(self) -> None:
        # The mixin's loop comes here after every message and at least once a second.
        now = time.time()
        if self._waited and not self._handled and self._on_idle is not None:
            # The broker listened for us from the wait's start for one wait's time. Not
            # until now: if this process was stopped since, messages came meanwhile.
            self._on_idle(min(now, self._wait_started + _WAIT_S))
        self._waited, self._handled, self._wait_started = True, False, now
        if self._tick is not None and time.monotonic() >= self._next_tick:
            self._next_tick = time.monotonic() + 1.0
            self._tick()
