"""How deep each Drover queue is, read from the broker itself.

* Redis (kombu's transport): a queue is a list per priority level, and messages handed
  to a consumer but not yet acknowledged sit in kombu's ``unacked`` hash, from which they
  are counted per queue. Redis cannot say how many consumers a queue has.
* RabbitMQ: a passive declare gives ready messages and consumers without creating
  anything; messages in flight are not part of that answer, so ``unacked`` is null.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import redis
from kombu.entity import Queue

from orchestrator.bus import BrokerUnavailable
from orchestrator.settings import redacted

if TYPE_CHECKING:
    from orchestrator.runtime import Parts

__all__ = ["queue_depths"]

# kombu's Redis transport keeps a queue's messages of priority p in "<queue><sep><p>"
# (the default priority in the bare name) and every unacknowledged message in one hash.
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_KOMBU_UNACKED = "unacked"


def queue_depths(parts: Parts) -> list[dict[str, Any]]:
    topology = parts.bus.topology
    queues = [
        topology.commands_queue,
        topology.coordinator_queue,
        *(topology.service_queue(s) for s in parts.fleet.service_names()),
    ]
    url = parts.settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _redis_depths(url, queues)
    return parts.bus.queue_depths(queues)


def _redis_depths(url: str, queues: list[Queue]) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        return _read_redis_depths(client, queues)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"{redacted(url)}: {exc}") from exc
    finally:
        client.close()


def _read_redis_depths(client: redis.Redis, queues: list[Queue]) -> list[dict[str, Any]]:
    unacked = _unacked_per_queue(client, queues)
    rows = []
    for queue in queues:
        names = [queue.name] + [
            f"{queue.name}{_KOMBU_PRIORITY_SEP}{p}" for p in _KOMBU_PRIORITY_STEPS if p
        ]
        ready = sum(int(client.llen(name)) for name in names)
        rows.append(
            {
                "name": queue.name,
                "ready": ready,
                "unacked": unacked.get(queue.name, 0),
                "consumers": None,
            }
        )
    return rows


def _unacked_per_queue(client: redis.Redis, queues: list[Queue]) -> dict[str, int]:
    # Each entry is [message, exchange, routing_key]; the pair tells which queue it left.
    by_route = {(q.exchange.name, q.routing_key): q.name for q in queues}
    by_exchange = {q.exchange.name: q.name for q in queues if q.routing_key == "#"}
    counts: dict[str, int] = {}
    for raw in client.hvals(_KOMBU_UNACKED):
        try:
            _, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        name = by_route.get((exchange, routing_key)) or by_exchange.get(exchange)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts
