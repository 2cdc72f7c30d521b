# kombu ships no annotations for its transports (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-subclassing-any=False, disallow-untyped-calls=False
"""kombu's Redis transport, with one redis-py client per channel, and a batched intake.

**One client.** Outside its poll, kombu's Redis channel makes a new redis-py client for
every operation: each publish makes two (one to read the exchange's bindings, one to push
the message), each acknowledgement and each delivery's bookkeeping one more. Making a
client is about 0.1 ms of Python (it copies redis-py's table of some 170 response
callbacks), more than the round trip it is made for, and it is paid by the coordinator
and the worker on every component. This channel makes one, on the channel's connection
pool, and makes it again only when kombu replaces that pool (after a lost connection).
A client shares the pool's connections and takes one per call, as the clients it
replaces did, so it may be used from any thread the channel is.

**The intake.** kombu takes one message per poll: a ``BRPOP`` naming every queue the
channel consumes (a worker serving a thousand services names a thousand lists each
time), then, once the message is out of its list, a second round trip to record it as
unacknowledged (so that it is handed out again if the consumer dies before acknowledging
it). A message taken between the two and a consumer killed there is lost. Here, while
messages are waiting, each poll is one Lua call instead (:data:`_TAKE`) that takes as
many as the consumer has room for (its prefetch), across the queues in kombu's fair
order, and records each as unacknowledged in the same atomic step: one round trip for
several messages, and none taken without its record. When a take comes back short, the
queues are empty: the next poll is kombu's blocking ``BRPOP`` again, and the first message
it brings makes the following poll a take. Queues consumed without acknowledgements get
no record, as in kombu.

Everything else is kombu's: the same keys, the same records of unacknowledged messages,
acknowledgement and redelivery (the visibility timeout), so Drover's processes and any
other kombu or Celery process share queues as before. The take's script declares itself
a writer (``#!lua``), so a Redis out of memory refuses it before it takes anything (and
kombu's ``BRPOP`` goes on); a Redis that refuses it for any reason gets ``BRPOP`` until
the next message comes.

Drover uses it for ``redis://`` brokers (:func:`transport_for`); TLS (``rediss://``) and
Sentinel URLs keep kombu's own, which sets them up from the URL's scheme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any, Final

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

__all__ = ["Channel", "Transport", "transport_for"]

log = logging.getLogger(__name__)

# When the consumer sets no prefetch: the most one take brings.
_TAKE_AT_MOST: Final = 16

# KEYS: 1 the unacknowledged messages' index (a sorted set, by time taken), 2 the
# unacknowledged messages (a hash, by delivery tag), 3... the lists in kombu's order.
# ARGV: 1 the time taken, 2 the most to take, 3 one letter per list: "a" where the
# consumer acknowledges (record what is taken), "n" where it does not.
# Takes in rounds, one message from each list that still has one, so that a busy queue
# does not keep the others waiting. Returns the index (from 1) of each list taken from and
# the message, in turn. A message the script cannot read (not kombu's JSON, no delivery
# tag) goes back where it was and ends the take: kombu's BRPOP, next, deals with it as it
# always has.
_TAKE: Final = """#!lua
local taken = {}
local most = tonumber(ARGV[2])
local lists = {}
for i = 3, #KEYS do
  lists[#lists + 1] = i
end
while #lists > 0 do
  local still = {}
  for _, i in ipairs(lists) do
    local raw = redis.call('RPOP', KEYS[i])
    if raw then
      local list = i - 2
      if string.sub(ARGV[3], list, list) == 'a' then
        local ok, message = pcall(cjson.decode, raw)
        local properties = ok and type(message) == 'table' and message['properties']
        local info = type(properties) == 'table' and properties['delivery_info']
        local tag = type(properties) == 'table' and properties['delivery_tag']
        if type(tag) ~= 'string' or type(info) ~= 'table' then
          redis.call('RPUSH', KEYS[i], raw)
          return taken
        end
        -- As kombu's QoS.append records it: [message, exchange, routing key].
        local record = '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ','
          .. cjson.encode(info['routing_key']) .. ']'
        redis.call('ZADD', KEYS[1], ARGV[1], tag)
        redis.call('HSET', KEYS[2], tag, record)
      end
      taken[#taken + 1] = list
      taken[#taken + 1] = raw
      if #taken >= 2 * most then
        return taken
      end
      still[#still + 1] = i
    end
  end
  lists = still
end
return taken
"""


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.recorded_by_take:
            # Only kombu's bookkeeping in memory: the take recorded it in Redis.
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

    _operations_client: redis.Redis | None = None
    _in_poll: Any = None  # kombu's: the connection a BRPOP (here, or a take) is in flight on
    # The lists of the take in flight (None: a BRPOP or nothing is), and whether the next
    # poll takes (messages were waiting at the last) or blocks.
    _taking: list[str] | None = None
    _backlog = True
    _asked = 0  # how many the take in flight asked for
    # True while delivering what a take recorded, for QoS.append.
    recorded_by_take = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged_queues: set[str] = set()

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

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._unacknowledged_queues.add(queue)
        else:
            self._unacknowledged_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._backlog:
            super()._brpop_start(timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        steps = self.priority_steps
        lists = [queue for _ in steps for queue in queues]
        keys = [self._q_for_pri(queue, pri) for pri in steps for queue in queues]
        marks = "".join("n" if queue in self._unacknowledged_queues else "a" for queue in lists)
        prefix = self.global_keyprefix
        records = (self.unacked_index_key, self.unacked_key)
        self._taking = lists
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's, None at rest
        self.client.connection.send_command(
            "EVAL",
            _TAKE,
            len(keys) + 2,
            *(prefix + key for key in (*records, *keys)),
            time.time(),
            self._room(),
            marks,
        )

    def _brpop_read(self, **options: Any) -> bool:
        lists, self._taking = self._taking, None
        if lists is None:
            delivered: bool = super()._brpop_read(**options)  # raises Empty when none came
            self._backlog = True
            return delivered
        taken = self._read_take(**options)
        asked = self._asked
        self._backlog = len(taken) // 2 >= asked
        if not taken:
            raise Empty()  # nothing waiting: BRPOP next
        self.recorded_by_take = True
        try:
            for index, raw in zip(taken[::2], taken[1::2], strict=True):
                queue = lists[index - 1]
                self._queue_cycle.rotate(queue)
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
        finally:
            self.recorded_by_take = False
        return True

    def _room(self) -> int:
        room = self.qos.can_consume_max_estimate()
        self._asked = _TAKE_AT_MOST if room is None else min(room, _TAKE_AT_MOST)
        return self._asked

    def _read_take(self, **options: Any) -> list[Any]:
        connection = self.client.connection
        try:
            reply: list[Any] = self.client.parse_response(connection, "EVAL", **options)
        except self.connection_errors:
            connection.disconnect()  # the next poll connects again, as after a BRPOP
            raise
        except self.ResponseError as refused:
            log.warning("Redis refused the batched take (%s): taking with BRPOP", refused)
            return []
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        return reply


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> type[Transport] | None:
    """The kombu transport Drover's connections (and Celery's) use for ``broker_url``:
    this module's for plain Redis, None (kombu's choice by the URL's scheme) otherwise."""
    return Transport if broker_url.startswith("redis://") else None
