# kombu ships no annotations for its transports (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-subclassing-any=False, disallow-untyped-calls=False
"""kombu's Redis transport, with one redis-py client per channel instead of one per call.

Outside its poll, kombu's Redis channel makes a new redis-py client for every operation:
each publish makes two (one to read the exchange's bindings, one to push the message),
each acknowledgement and each delivery's bookkeeping one more. Making a client is about
0.1 ms of Python (it copies redis-py's table of some 170 response callbacks), more than
the round trip it is made for, and it is paid by the coordinator and the worker on
every component. This channel makes one, on the channel's connection pool, and makes it
again only when kombu replaces that pool (after a lost connection).

A client shares the pool's connections and takes one per call, as the clients it
replaces did, so it may be used from any thread the channel is. Everything else is
kombu's: the same keys, the same acknowledgement and redelivery, so Drover's processes
and any other kombu or Celery process share queues as before.

Drover uses it for ``redis://`` brokers (:func:`transport_for`); TLS (``rediss://``) and
Sentinel URLs keep kombu's own, which sets them up from the URL's scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "transport_for"]


class Channel(kombu_redis.Channel):
    _operations_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client is not None:
            yield client
            return
        pool = self.pool  # a new one after kombu dropped the old with its connections
        cached = self._operations_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._operations_client = self._create_client()
        yield cached


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> type[Transport] | None:
    """The kombu transport Drover's connections (and Celery's) use for ``broker_url``:
    this module's for plain Redis, None (kombu's choice by the URL's scheme) otherwise."""
    return Transport if broker_url.startswith("redis://") else None
