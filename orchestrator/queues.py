"""How deep and how old each Drover queue is, read from the broker itself.

One row per Drover queue (commands, coordinator, one per service), in that order::

    {"name": "drover.svc.api", "ready": 3, "unacked": 1, "consumers": None,
     "oldest_age_s": 12.417, "source": "redis"}

* ``ready``: messages waiting to be delivered.
* ``unacked``: messages delivered to a consumer and not yet acknowledged (in flight).
* ``consumers``: consumers attached to the queue.
* ``oldest_age_s``: age of the oldest waiting message, from the ``drover_sent_at`` header
  (epoch seconds) the bus puts on every message, Celery tasks included (``send_task``
  merges it into Celery's own headers). Null when nothing waits, or when no message
  looked at carries the header. It compares the publisher's clock with this machine's:
  skew between them shows as age (never below 0). In-flight messages are not counted.
* ``source``: how the row was read: ``redis``, ``rabbitmq-management`` or
  ``rabbitmq-passive``.

Null means the broker cannot tell, never "zero".

Redis (kombu's transport), ``source: "redis"``; everything is read in one MULTI:

* ready: LLEN of the queue's lists, one per priority level (``<queue>``,
  ``<queue>\\x06\\x163``, ...).
* unacked: kombu keeps every message handed out and not yet acknowledged in one hash,
  ``unacked``, as ``[message, exchange, routing key]``. An entry is counted for the
  queue its route leads to, as kombu does when it restores one; the default exchange
  (``""``, how Celery's ``send_task`` publishes) names the queue in its routing key.
  kombu keeps nothing else: a message taken from another queue bound to the events
  exchange (a listener's own) is counted for the coordinator's queue too.
* consumers: null. kombu's consumers BRPOP the lists and leave no key behind; CLIENT LIST
  shows a blocked BRPOP without its keys and nothing between two BRPOPs, and asking
  Celery workers over their control channel would miss the coordinator.
* oldest_age_s: kombu LPUSHes new messages and consumers pop from the other end, so the
  next message out is at index -1. But a message given back (a reject with requeue,
  which the coordinator does while its store is away) is LPUSHed behind the newest,
  and one restored after the visibility timeout is RPUSHed in front: the oldest can be
  anywhere. The 50 messages at each end of every list are read (a list of up to 100 is
  read whole, and the age is exact); beyond that it is a lower bound.

RabbitMQ:

* ready, consumers: a passive ``queue.declare``: live figures, and nothing is created (a
  queue not declared yet reads as empty).
* unacked: AMQP cannot count another channel's unacknowledged messages. The management
  API (``http://<host>:15672/api/queues/<vhost>/<queue>``, https on 15671 for amqps,
  with the broker URL's credentials) can: when it answers, ``source`` is
  ``rabbitmq-management`` and ``unacked`` is its ``messages_unacknowledged``, a figure
  sampled every few seconds (5 by default), so it lags. When it does not answer (plugin
  off, another port, credentials refused), ``unacked`` is null and ``source`` is
  ``rabbitmq-passive``.
* oldest_age_s: when ``ready`` > 0, the head message is peeked: ``basic.get`` without
  ack, then ``basic.reject`` with requeue, which puts it back in its original place, so
  the head is also the oldest. The cost: the message is marked redelivered (Drover never
  reads that flag, nor does Celery with Drover's settings: only
  ``worker_deduplicate_successful_tasks`` would), and while it is held, for one round
  trip, a consumer whose prefetch frees up can be handed the message behind it. The
  management API's ``head_message_timestamp`` is not used: it needs a plugin and the AMQP
  timestamp property. Only classic queues are peeked (Drover declares those): on a quorum
  queue a requeue counts toward its delivery limit. The type is the management API's
  when it answers, else the queue's declared ``x-queue-type`` — a vhost whose default
  queue type is quorum is not detected without the management API.

A broker that cannot be reached raises :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import quote, unquote, urlsplit

import redis
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import OperationalError as KombuOperationalError

from orchestrator.bus import BrokerUnavailable
from orchestrator.settings import redacted

if TYPE_CHECKING:
    from orchestrator.runtime import Parts

__all__ = ["QueueDepth", "queue_depths"]

# The header the bus stamps every message with (orchestrator.bus._headers).
_SENT_AT_HEADER: Final = "drover_sent_at"

# A command that reads a few counters must not hang on a broker that stopped answering.
_TIMEOUT_S: Final = 5.0

# kombu's Redis transport keeps a queue's messages of priority p in "<queue><sep><p>"
# (the default priority in the bare name) and every unacknowledged message in one hash.
_KOMBU_PRIORITY_SEP: Final = "\x06\x16"
_KOMBU_PRIORITY_STEPS: Final = (0, 3, 6, 9)
_KOMBU_UNACKED: Final = "unacked"
# Messages read at each end of a Redis list for the age; bounds the cost of a deep queue.
_AGE_WINDOW: Final = 50

# The management API answers quickly or not at all; its absence is the usual case.
_MANAGEMENT_TIMEOUT_S: Final = 2.0
_MANAGEMENT_PORTS: Final = {"http": 15672, "https": 15671}
# Queue types on which a peek's requeue is free (quorum queues count it as a delivery).
_PEEKABLE_TYPES: Final = frozenset({"classic"})


class QueueDepth(TypedDict):
    """One Drover queue, as the broker sees it; None where the broker cannot tell."""

    name: str
    ready: int
    unacked: int | None
    consumers: int | None
    oldest_age_s: float | None
    source: str


def queue_depths(parts: Parts) -> list[QueueDepth]:
    """Every Drover queue's depth, in-flight count, consumers and oldest waiting age."""
    topology = parts.bus.topology
    queues = [
        topology.commands_queue,
        topology.coordinator_queue,
        *(topology.service_queue(s) for s in parts.fleet.service_names()),
    ]
    url = parts.settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _redis_depths(url, queues)
    return _rabbitmq_depths(url, queues)


# --- ages ------------------------------------------------------------------------------


def _age_s(headers: object, now: float) -> float | None:
    """How long ago a message with these headers was sent; None without the header."""
    if not isinstance(headers, Mapping):
        return None
    sent_at = headers.get(_SENT_AT_HEADER)
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
        return None
    return round(max(0.0, now - sent_at), 3)


def _oldest(ages: Iterable[float | None]) -> float | None:
    known = [age for age in ages if age is not None]
    return max(known) if known else None


# --- Redis -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RedisQueue:
    ready: int
    sampled: frozenset[bytes]  # raw messages read at the ends of its lists, for the age


def _redis_depths(url: str, queues: list[Queue]) -> list[QueueDepth]:
    client = redis.Redis.from_url(url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S)
    try:
        lists, unacked_entries = _redis_snapshot(client, queues)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"{redacted(url)}: {exc}") from exc
    finally:
        client.close()
    now = time.time()
    unacked = _unacked_per_queue(unacked_entries, queues)
    return [
        QueueDepth(
            name=queue.name,
            ready=lists[queue.name].ready,
            unacked=unacked.get(queue.name, 0),
            consumers=None,
            oldest_age_s=_oldest(_redis_age(raw, now) for raw in lists[queue.name].sampled),
            source="redis",
        )
        for queue in queues
    ]


def _priority_lists(queue: Queue) -> list[str]:
    return [queue.name] + [
        f"{queue.name}{_KOMBU_PRIORITY_SEP}{p}" for p in _KOMBU_PRIORITY_STEPS if p
    ]


def _redis_snapshot(
    client: redis.Redis, queues: list[Queue]
) -> tuple[dict[str, _RedisQueue], list[bytes]]:
    # One transaction: counts, samples and the unacked hash all describe the same moment.
    with client.pipeline(transaction=True) as pipe:
        for queue in queues:
            for key in _priority_lists(queue):
                pipe.llen(key)
                pipe.lrange(key, 0, _AGE_WINDOW - 1)  # the newest, and requeued ones
                pipe.lrange(key, -_AGE_WINDOW, -1)  # the next out
        pipe.hvals(_KOMBU_UNACKED)
        *replies, unacked_entries = pipe.execute()
    per_queue = 3 * len(_KOMBU_PRIORITY_STEPS)
    lists = {
        queue.name: _redis_queue(replies[i * per_queue : (i + 1) * per_queue])
        for i, queue in enumerate(queues)
    }
    return lists, unacked_entries


def _redis_queue(replies: list[Any]) -> _RedisQueue:
    lengths, newest, next_out = replies[0::3], replies[1::3], replies[2::3]
    sampled = {raw for window in (*newest, *next_out) for raw in window}
    return _RedisQueue(ready=sum(int(n) for n in lengths), sampled=frozenset(sampled))


def _redis_age(raw: bytes, now: float) -> float | None:
    # kombu stores {"body": ..., "headers": {...}, "properties": {...}}; a Celery task's
    # headers are Celery's own, with send_task's headers merged in.
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return _age_s(payload.get("headers") if isinstance(payload, dict) else None, now)


def _unacked_per_queue(entries: list[bytes], queues: list[Queue]) -> dict[str, int]:
    # Each entry is [message, exchange, routing_key]; the route tells which queue it left.
    by_route = {(q.exchange.name, q.routing_key): q.name for q in queues}
    by_route.update({("", q.name): q.name for q in queues})  # the default exchange
    by_exchange = {q.exchange.name: q.name for q in queues if q.routing_key == "#"}
    counts: dict[str, int] = {}
    for raw in entries:
        try:
            _, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        name = by_route.get((exchange, routing_key)) or by_exchange.get(exchange)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


# --- RabbitMQ --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Managed:
    """What the management API says of one queue."""

    unacked: int | None
    kind: str | None  # classic, quorum, stream; None when the queue does not exist


def _rabbitmq_depths(url: str, queues: list[Queue]) -> list[QueueDepth]:
    managed = _management_view(url, queues)
    connection = Connection(url, connect_timeout=_TIMEOUT_S)
    with _rabbitmq_errors(url, connection), connection:
        return [_rabbitmq_row(connection, queue, managed) for queue in queues]


@contextmanager
def _rabbitmq_errors(url: str, connection: Connection) -> Iterator[None]:
    try:
        yield
    except (KombuOperationalError, OSError, *connection.connection_errors) as exc:
        raise BrokerUnavailable(f"{redacted(url)}: {exc}") from exc


def _rabbitmq_row(
    connection: Connection, queue: Queue, managed: dict[str, _Managed] | None
) -> QueueDepth:
    source = "rabbitmq-passive" if managed is None else "rabbitmq-management"
    unacked = None if managed is None else managed[queue.name].unacked
    channel = connection.channel()
    try:
        _, ready, consumers = queue.bind(channel).queue_declare(passive=True)
    except connection.channel_errors:  # not declared yet: nothing in it (channel closed)
        return QueueDepth(
            name=queue.name,
            ready=0,
            unacked=None if managed is None else 0,
            consumers=0,
            oldest_age_s=None,
            source=source,
        )
    try:
        age = _peek_age(channel, queue.name) if ready and _peekable(queue, managed) else None
    finally:
        channel.close()
    return QueueDepth(
        name=queue.name,
        ready=ready,
        unacked=unacked,
        consumers=consumers,
        oldest_age_s=age,
        source=source,
    )


def _peekable(queue: Queue, managed: dict[str, _Managed] | None) -> bool:
    kind = managed[queue.name].kind if managed is not None else None
    if kind is None:  # no management API: trust what the queue was declared as
        # An attribute kombu sets from its attrs table, unknown to its annotations.
        arguments = getattr(queue, "queue_arguments", None) or {}
        kind = arguments.get("x-queue-type", "classic")
    return kind in _PEEKABLE_TYPES


def _peek_age(channel: Any, queue: str) -> float | None:
    """The head message's age: taken without ack and put straight back where it was."""
    message = channel.basic_get(queue=queue, no_ack=False)
    if message is None:  # a consumer took it since the declare
        return None
    try:
        return _age_s(message.headers, time.time())
    finally:
        channel.basic_reject(message.delivery_tag, requeue=True)


def _management_view(url: str, queues: list[Queue]) -> dict[str, _Managed] | None:
    """Each queue as the management API sees it; None if the API does not answer."""
    base, authorization = _management_endpoint(url)
    view = {}
    for queue in queues:
        request = urllib.request.Request(
            f"{base}/{quote(queue.name, safe='')}", headers={"Authorization": authorization}
        )
        try:
            with urllib.request.urlopen(request, timeout=_MANAGEMENT_TIMEOUT_S) as response:
                view[queue.name] = _managed(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # refused credentials, or not the management API
                return None
            view[queue.name] = _Managed(unacked=0, kind=None)  # not declared yet
        except (OSError, ValueError):  # nothing listens, or it does not speak JSON
            return None
    return view


def _managed(body: object) -> _Managed:
    fields = body if isinstance(body, dict) else {}
    unacked = fields.get("messages_unacknowledged")
    kind = fields.get("type")
    return _Managed(
        unacked=unacked if isinstance(unacked, int) else None,
        kind=kind if isinstance(kind, str) else None,
    )


def _management_endpoint(url: str) -> tuple[str, str]:
    """The API's base URL for the broker URL's vhost, and its Authorization header."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    host = parts.hostname or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    vhost = unquote(parts.path[1:]) or "/"  # kombu's default vhost is "/"
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    base = f"{scheme}://{host}:{_MANAGEMENT_PORTS[scheme]}/api/queues/{quote(vhost, safe='')}"
    return base, f"Basic {token}"
