# kombu ships no annotations for its transports (as for orchestrator.bus in pyproject.toml).
# mypy: disallow-subclassing-any=False, disallow-untyped-calls=False
"""kombu's Redis transport, with its hot calls past redis-py's client, a batched intake,
the list of queues consumed kept between polls, a publish routed and pushed in one call,
and commands packed in C.

**Past redis-py's client.** Outside its poll, kombu's Redis channel makes a new redis-py
client for every operation: each publish makes two (one to read the exchange's bindings,
one to push the message), each acknowledgement and each delivery's bookkeeping one more.
Making a client is about 0.1 ms of Python (it copies redis-py's table of some 170
response callbacks), and a call through one about 240,000 instructions, against 35,000
past it (:mod:`orchestrator.redis_calls`). This channel sends its take, its publish, its push and
its acknowledgement (kombu's two records removed in one Lua call) on connections of the
channel's pool kept past the client (:attr:`Channel.calls`), and what else kombu does
through one client it keeps; both are made again only when kombu replaces that pool
(after a lost connection). Either may be used from any thread the channel is.

**The intake.** kombu takes one message per poll: a ``BRPOP`` naming every queue the
channel consumes (a worker serving a thousand services names a thousand lists each
time), then, once the message is out of its list, a second round trip to record it as
unacknowledged (so that it is handed out again if the consumer dies before acknowledging
it); a consumer killed between the two loses the message. Here that second round trip
is a take (:data:`_TAKE`, one Lua call): it records the message ``BRPOP`` brought and
takes as many more as the consumer has room for (its prefetch), in rounds across the
first queues in kombu's fair order, recording each in the same atomic step. While
messages keep coming that way, each poll is a take, without ``BRPOP``: one round trip
for several messages, none taken without its record. When a take comes back short, the
next poll is ``BRPOP`` again. Once Redis has run a take on the channel, the take that
records what ``BRPOP`` brought is sent on the poll's connection and the message handed
over at once, without waiting for the answer: the next poll reads it (the messages it
took; or a refusal, and the message is recorded then, as kombu records it). A crash loses
the message only before its record is sent, as when the answer was waited for, but the
chain of a release no longer waits a round trip at each consumer. A take looks at a few
lists per message it may bring (:data:`_LOOK_AT_PER_MESSAGE`), not all: each list named
costs Redis time, and a thousand named would cost more than the take saves. Lists it
finds empty go to the back of the order; what waits further down comes by ``BRPOP``,
which names every list, as in kombu. A lone message costs what it costs in kombu,
``BRPOP`` and one round trip (the take sees empty lists with one ``EXISTS``), the round
trip not waited for. Queues consumed without acknowledgements get no record, as in kombu.

**The queues consumed.** kombu builds the list of the queues a channel consumes anew at
every turn of the event loop (``active_queues``, from every queue consumed: a thousand
for a worker of a wide fleet); the channel keeps it until a consumer is added or
cancelled. The ``BRPOP`` naming them all is made per priority step, not one function
call per list.

**Routed and pushed in one call.** kombu publishes to an exchange in two round trips:
it reads the exchange's bindings (``SMEMBERS``), routes the message by them in Python,
then pushes it onto each queue. Here a channel keeps the bindings it last read of each
exchange and routes by them with kombu's own matching; the push is one Lua call
(:data:`_ROUTE`) that checks the exchange still has exactly those bindings and pushes
only if so. Where they changed (a queue bound or unbound since), it pushes nothing and
returns them as they are, and the message is routed again by those: a message is never
routed by bindings that are no longer the exchange's. Direct and topic exchanges go this
way; fanout exchanges, publishes kombu batches, queues that expire, and a message routed
nowhere on a channel with a dead-letter queue go kombu's. A message routed nowhere is
dropped, as kombu drops it, once the call has checked that nothing is bound to take it.

**The event loop's readers.** kombu adds each socket it polls to the event loop again at
every turn of the loop; here only a socket the loop does not have is added
(:meth:`Transport.register_with_event_loop`).

**Packed in C.** redis-py encodes every argument of a command in Python before hiredis
packs them: a ``BRPOP`` naming a thousand queues took 0.57 ms of the poll to pack, 0.08 ms
packed by hiredis directly, and the worker's poll holds the interpreter while a command
it has just handed over waits to start. The channel's connections pack what hiredis
can pack themselves (the same bytes), and leave the rest to redis-py.

Everything else is kombu's: the same keys, the same records of unacknowledged messages,
acknowledgement and redelivery (the visibility timeout), so Drover's processes and any
other kombu or Celery process share queues as before. The take's script declares itself
a writer (``#!lua``, Redis 7.0 and later), so a Redis out of memory refuses it before it
takes anything; a Redis that refuses it for any reason (an older one refuses every take)
gets kombu's way, a warning said once.

Drover uses it for ``redis://`` brokers (:func:`orchestrator.bus.transport_for`); TLS
(``rediss://``) and Sentinel URLs keep kombu's own, which sets them up from the URL's
scheme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any, Final, cast

import hiredis
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from orchestrator.redis_calls import PUSHED_IF_BOUND_LUA, Argument, KeptConnections, Lua

__all__ = ["Channel", "Transport"]

log = logging.getLogger(__name__)

# When the consumer sets no prefetch: the most one take brings.
_TAKE_AT_MOST: Final = 16
# The lists a take looks at, per message it may bring: the first in kombu's order. Every
# list passed costs Redis about half a microsecond (a thousand passed cost more than the
# rest of a take); the lists looked at and found empty go to the end of the order, so
# that services with nothing waiting do not stay in front of those with something.
_LOOK_AT_PER_MESSAGE: Final = 8

# KEYS: 1 the unacknowledged messages' index (a sorted set, by time taken), 2 the
# unacknowledged messages (a hash, by delivery tag), 3... the lists to look at, in kombu's
# order. ARGV: 1 the time taken, 2 the most to take, 3 one letter per list: "a" where the
# consumer acknowledges (record what is taken), "n" where it does not; 4, if given, a
# message BRPOP took from a queue consumed with acknowledgements, to record first.
# Takes in rounds, one message from each list that still has one, so that a busy queue
# does not keep the others waiting. Returns how many lists (from the first) the first
# round looked at, then the index (from 1) of each list taken from and the message, in
# turn. A message the script cannot read (not kombu's JSON, no delivery tag) goes back
# where it was and ends the take: kombu's BRPOP, next, deals with it as it always has.
_TAKE: Final = Lua("""#!lua
local function record(raw)
  local ok, message = pcall(cjson.decode, raw)
  local properties = ok and type(message) == 'table' and message['properties']
  local info = type(properties) == 'table' and properties['delivery_info']
  local tag = type(properties) == 'table' and properties['delivery_tag']
  if type(tag) ~= 'string' or type(info) ~= 'table' then
    return false
  end
  -- As kombu's QoS.append records it: [message, exchange, routing key].
  redis.call('ZADD', KEYS[1], ARGV[1], tag)
  redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(info['exchange'])
    .. ',' .. cjson.encode(info['routing_key']) .. ']')
  return true
end

if ARGV[4] then
  record(ARGV[4])
end
local taken = {0}
local most = tonumber(ARGV[2])
if #KEYS == 2 or most == 0 then
  return taken
end
if redis.call('EXISTS', unpack(KEYS, 3)) == 0 then
  taken[1] = #KEYS - 2
  return taken
end
local lists = {}
for i = 3, #KEYS do
  lists[#lists + 1] = i
end
local first_round = true
while #lists > 0 do
  local still = {}
  for _, i in ipairs(lists) do
    local list = i - 2
    local raw = redis.call('RPOP', KEYS[i])
    if raw and string.sub(ARGV[3], list, list) == 'a' and not record(raw) then
      redis.call('RPUSH', KEYS[i], raw)
      return taken
    end
    if first_round then
      taken[1] = list
    end
    if raw then
      taken[#taken + 1] = list
      taken[#taken + 1] = raw
      if #taken > 2 * most then
        return taken
      end
      still[#still + 1] = i
    end
  end
  first_round = false
  lists = still
end
return taken
""")


# The exchange types whose routing kombu does in Python from the bindings alone (fanout
# exchanges are Redis's PUBLISH, not lists).
_ROUTED_HERE: Final = frozenset({"direct", "topic"})
# Past this many bindings an exchange is routed kombu's way: the route's script is
# passed every binding, and Lua unpacks at most a few thousand values at once.
_ROUTE_BINDINGS_AT_MOST: Final = 1000
# Routings by bindings found changed before kombu's way is taken: each is one round trip,
# and bindings changing under every publish are no steady state to optimise for.
_ROUTE_TRIES: Final = 3

# KEYS: 1 the exchange's bindings (kombu's set), 2... the lists to push the message onto.
# ARGV: 1 the message, 2... every binding the publisher routed it by (none, and no lists,
# for a message routed nowhere). Pushes the message onto each list if the set holds
# exactly those bindings, and returns how many lists it pushed to; otherwise pushes
# nothing and returns the bindings as they are now.
_ROUTE: Final = Lua(
    "#!lua"
    + PUSHED_IF_BOUND_LUA
    + """
if pushed_if_bound(KEYS[1], {unpack(ARGV, 2)}, {unpack(KEYS, 2)}, ARGV[1]) then
  return #KEYS - 1
end
return redis.call('SMEMBERS', KEYS[1])
"""
)

# KEYS: 1 the unacknowledged messages' index, 2 the unacknowledged messages. ARGV: 1 the
# delivery tag of a message acknowledged. As kombu's acknowledgement, in one step. No
# flags: a Redis out of memory still takes what only frees it, as it takes kombu's.
_FORGET: Final = Lua("""
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
""")


@dataclass(frozen=True)
class _Bindings:
    """An exchange's bindings as a channel last read them: the set's members, and
    kombu's table of them (routing key, pattern, queue)."""

    members: tuple[bytes, ...]
    table: list[tuple[str, ...]]

    @classmethod
    def read(cls, members: Sequence[bytes], sep: str) -> _Bindings:
        # As kombu's get_table reads them.
        table = [tuple(bytes_to_str(member).split(sep)) for member in members]
        return cls(tuple(members), table)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.recorded_by_take:
            # Only kombu's bookkeeping in memory: the take recorded it in Redis.
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:  # kombu's own: put back where it was, in one transaction
            super().reject(delivery_tag, requeue=True)
            return
        self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def _forget(self, delivery_tag: str) -> None:
        """Remove the record of a message handled (kombu's two, in one call; kombu's own
        way where Redis refuses the script)."""
        if not self.channel.forgot(delivery_tag):
            self._remove_from_indices(delivery_tag).execute()


class Channel(kombu_redis.Channel):
    QoS = QoS

    _operations_client: redis.Redis | None = None
    _kept: KeptConnections | None = None
    _in_poll: Any = None  # kombu's: the connection a BRPOP (here, or a take) is in flight on
    # The take in flight (None: a BRPOP or nothing is in flight), and whether the next
    # poll takes (the last take came back full).
    _taking: _Take | None = None
    _backlog = False
    # Whether Redis ran the last take: a record then goes out without being waited for.
    _takes_run = False
    _consumed: list[str] | None = None  # active_queues, until the queues consumed change
    # True while delivering what a take recorded, for QoS.append.
    recorded_by_take = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged_queues: set[str] = set()
        self._bindings: dict[str, _Bindings] = {}  # by exchange, as last read
        self._refusals_said: set[str] = set()

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

    @property
    def calls(self) -> KeptConnections:
        """Calls past redis-py's client (:mod:`orchestrator.redis_calls`), on connections of
        the channel's pool, kept until kombu replaces the pool."""
        pool = self.pool
        kept = self._kept
        if kept is None or kept.pool is not pool:
            kept = self._kept = KeptConnections(pool)
        return kept

    def forgot(self, delivery_tag: str) -> bool:
        """Whether the record of a message handled was removed in one call (False: Redis
        refused the script)."""
        prefix = self.global_keyprefix
        records = [prefix + self.unacked_index_key, prefix + self.unacked_key]
        try:
            self.calls.script(_FORGET, records, [delivery_tag])
        except self.ResponseError as refused:
            self._refused("an acknowledgement in one call", refused)
            return False
        return True

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        queued = None if "_publish_batch" in kwargs else self.as_queued(queue, message)
        if queued is None:
            super()._put(queue, message, **kwargs)
            return
        self.calls.command("LPUSH", *queued)

    def as_queued(self, queue: str, message: Any) -> tuple[str, str] | None:
        """The list where ``message``, published to ``queue`` by its name, waits, and what
        the list holds of it, as :meth:`_put` pushes it: for another to push in its place
        (a store sharing this Redis, in the commit that decided the message). None for a
        queue that expires, which kombu's own way keeps alive."""
        if queue in self._expires:
            return None
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        return self.global_keyprefix + key, dumps(message)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._unacknowledged_queues.add(queue)
        else:
            self._unacknowledged_queues.discard(queue)
        self._consumed = None
        try:
            return super().basic_consume(queue, no_ack, *args, **kwargs)
        finally:
            self._consumed = None

    def _basic_cancel(self, consumer_tag: str) -> Any:
        self._consumed = None
        try:
            return super()._basic_cancel(consumer_tag)
        finally:
            self._consumed = None

    @property
    def active_queues(self) -> list[str]:
        # kombu builds this list anew at every turn of the event loop, from every queue
        # the channel consumes (a thousand for a worker of a wide fleet): kept here until
        # a consumer is added or cancelled, the only changes to what it is built from.
        if self._consumed is None:
            self._consumed = super().active_queues
        return self._consumed

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        params["connection_class"] = _packed_in_c(params["connection_class"])
        return params

    # --- the poll: a take while messages keep coming, else kombu's BRPOP -------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self._backlog:
            self._take_start()
        else:
            self._block_start(timeout)

    def _block_start(self, timeout: float | None) -> None:
        """kombu's ``BRPOP`` naming every queue consumed, its keys made per priority step
        rather than per queue: kombu's ``_q_for_pri`` for each of a thousand queues took
        0.13 ms of every poll, while the command just handed over waited for the
        interpreter."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's, None at rest
        wait = self.brpop_timeout if timeout is None else timeout
        command = ["BRPOP", *self._lists_of(queues), wait or 0]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self.client.connection.send_command(*command)

    def _take_start(self, most: int | None = None, first: bytes | None = None) -> None:
        """Send a take of up to ``most`` (as many as there is room for: None), recording
        ``first`` (what BRPOP took, already handed over) before it takes any; its answer
        is read by the next poll (:meth:`_brpop_read`)."""
        most = self._room() if most is None else most
        lists, keys, args = self._take_of(most, first)
        if not lists and first is None:
            return
        self._taking = _Take(lists, most, first)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's, None at rest
        # Read as the poll reads its BRPOP: a script Redis has not seen cannot be sent again.
        self.client.connection.send_command("EVAL", _TAKE.script, len(keys), *keys, *args)

    def _brpop_read(self, **options: Any) -> bool:
        taking, self._taking = self._taking, None
        connection = self.client.connection
        try:
            try:
                reply = self.client.parse_response(
                    connection, "BRPOP" if taking is None else "EVAL", **options
                )
            except self.connection_errors:
                connection.disconnect()  # the next poll connects again
                raise
            except self.ResponseError as refused:
                if taking is None:
                    raise
                self._refused("the batched take", refused)
                self._takes_run = False
                if taking.first is not None:
                    self._record_late(taking.first)
                reply = [0]
            else:
                if taking is not None:
                    self._takes_run = True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if taking is None:
            return self._after_brpop(reply)
        looked, messages = _read(taking.lists, reply)
        self._backlog = 0 < taking.most <= len(messages)
        self._deliver_recorded(looked, messages)
        if not messages:
            raise Empty()  # nothing was waiting: BRPOP next
        return True

    def _after_brpop(self, reply: tuple[bytes, bytes] | None) -> bool:
        """Record what BRPOP took, take more with it, and deliver them all."""
        if not reply:
            raise Empty()
        key, raw = reply
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        most = self._room() - 1  # the room counts the one in hand
        acknowledged = queue not in self._unacknowledged_queues
        if not (most or acknowledged):
            self._backlog = False
            self._deliver_recorded([], [(queue, raw)])  # nothing to record, no room for more
            return True
        if self._takes_run:
            # Its record goes out first, with the take of more, on the poll's connection;
            # the message is handed over without waiting for the answer, which the next
            # poll reads. A crash loses it only before the record is sent, as when it was
            # waited for (and as in kombu, between its BRPOP and its record).
            self._take_start(most, first=raw if acknowledged else None)
            self._backlog = False
            self._deliver_recorded([], [(queue, raw)])
            return True
        lists, keys, args = self._take_of(most, first=raw if acknowledged else None)
        try:
            taken = self.calls.script(_TAKE, keys, args)
        except self.ResponseError as refused:
            self._refused("the batched take", refused)
            self._backlog = False
            self.connection._deliver(loads(bytes_to_str(raw)), queue)  # recorded as kombu does
            return True
        self._takes_run = True
        looked, messages = _read(lists, taken)
        self._backlog = 0 < most <= len(messages)
        self._deliver_recorded(looked, [(queue, raw), *messages])
        return True

    def _record_late(self, raw: bytes) -> None:
        """Record as kombu does a message handed over whose take Redis refused (after it
        ran takes before: one out of memory), if it is not acknowledged yet; the next
        records are waited for until Redis runs a take again. (Should its
        acknowledgement come in between, the record stays, and the message is handed out
        again after the visibility timeout: a command carried out twice is carried out
        once.)"""
        message = self.Message(loads(bytes_to_str(raw)), channel=self)
        if message.delivery_tag in self.qos._delivered:  # kombu's: those not acknowledged
            # Outside a take's delivery, the channel's QoS records it as kombu does.
            self.qos.append(message, message.delivery_tag)

    def _refused(self, what: str, refused: Exception) -> None:
        # Said once per channel: a Redis older than 7.0 refuses every script here (their
        # flags), and one full of data each, while kombu's path goes on.
        say = log.debug if what in self._refusals_said else log.warning
        say("Redis refused %s (%s): going kombu's way", what, refused)
        self._refusals_said.add(what)

    # --- publishing: routed by the bindings last read, pushed if they still hold ---------

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        kind = self.typeof(exchange).type if exchange else None
        if kind not in _ROUTED_HERE or "_publish_batch" in kwargs:
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        self._inplace_augment_message(message, exchange, routing_key)
        if not self._routed_and_pushed(message, exchange, routing_key):
            # kombu's basic_publish from here on (the message is augmented once only).
            self.typeof(exchange).deliver(message, exchange, routing_key, **kwargs)
        return None

    def _routed_and_pushed(self, message: Any, exchange: str, routing_key: str) -> bool:
        """Push ``message`` onto the queues ``exchange`` routes it to, checking in the
        same call that it was routed by the exchange's bindings as they are; False where
        kombu's way must take it instead."""
        bindings = self._known_bindings(exchange)
        bindings_key = self._bindings_key(exchange)
        for _ in range(_ROUTE_TRIES):
            route = self._route(message, exchange, routing_key, bindings)
            if route is None:
                return False
            lists, payload = route
            keys = (bindings_key, *lists)
            try:
                reply = self.calls.script(_ROUTE, keys, [payload, *bindings.members])
            except self.ResponseError as refused:
                self._refused("a publish in one call", refused)
                return False
            if not isinstance(reply, list):
                self._bindings[exchange] = bindings
                return True
            bindings = self._bindings[exchange] = _Bindings.read(reply, self.sep)
        return False

    def as_routed(
        self, message: Any, exchange: str, routing_key: str
    ) -> tuple[str, tuple[bytes, ...], list[str], str] | None:
        """Where ``message``, published to ``exchange`` under ``routing_key``, waits, by
        the exchange's bindings as this channel last read them, and what its lists hold
        of it, as :meth:`basic_publish` pushes it: the set of the bindings, the bindings,
        the lists and the payload (empty when routed nowhere). For another to push in
        its place (a store sharing this Redis, in the step that records the message),
        only while the set holds exactly those bindings (``PUSHED_IF_BOUND_LUA``). None
        where kombu's way must take it."""
        if self.typeof(exchange).type not in _ROUTED_HERE:
            return None
        self._inplace_augment_message(message, exchange, routing_key)
        bindings = self._known_bindings(exchange)
        route = self._route(message, exchange, routing_key, bindings)
        if route is None:
            return None
        lists, payload = route
        return self._bindings_key(exchange), bindings.members, lists, payload

    def _known_bindings(self, exchange: str) -> _Bindings:
        """The exchange's bindings as last read here: kept until a publish finds them
        changed (every push checks them in the call that pushes)."""
        bindings = self._bindings.get(exchange)
        if bindings is None:
            bindings = self._bindings[exchange] = self._read_bindings(exchange)
        return bindings

    def _bindings_key(self, exchange: str) -> str:
        return self.global_keyprefix + self.keyprefix_queue % (exchange,)

    def _route(
        self, message: Any, exchange: str, routing_key: str, bindings: _Bindings
    ) -> tuple[list[str], str] | None:
        """The lists ``bindings`` route ``message`` to, and what each holds of it (written
        out only if a list takes it); None where kombu's way must take it."""
        queues = self._routed(exchange, routing_key, bindings)
        if queues is None:
            return None
        priority = self._get_message_priority(message, reverse=False)
        lists = [self.global_keyprefix + self._q_for_pri(q, priority) for q in queues]
        return lists, dumps(message) if queues else ""

    def _read_bindings(self, exchange: str) -> _Bindings:
        with self.conn_or_acquire() as client:
            # Bytes: kombu's clients do not decode responses.
            members = cast("set[bytes]", client.smembers(self.keyprefix_queue % (exchange,)))
        return _Bindings.read(list(members), self.sep)

    def _routed(self, exchange: str, routing_key: str, bindings: _Bindings) -> list[str] | None:
        """The queues ``bindings`` route the message to, by kombu's matching (none: it is
        dropped, as kombu drops it); None where kombu's way must route it: a dead-letter
        queue for what routes nowhere, a queue that expires, too many bindings."""
        if len(bindings.members) > _ROUTE_BINDINGS_AT_MOST:
            return None
        found = self.typeof(exchange).lookup(bindings.table, exchange, routing_key, None)
        queues = sorted(found)
        if not queues and self.deadletter_queue is not None:
            return None
        unusual = (not q or q == self.deadletter_queue or q in self._expires for q in queues)
        return None if any(unusual) else queues

    def _room(self) -> int:
        room = self.qos.can_consume_max_estimate()
        return _TAKE_AT_MOST if room is None else min(room, _TAKE_AT_MOST)

    def _take_of(
        self, most: int, first: bytes | None = None
    ) -> tuple[list[str], list[str], list[Argument]]:
        """The lists a take tries, in kombu's order (none when it takes none), and the
        take's keys and arguments."""
        queues = self._queue_cycle.consume(most * _LOOK_AT_PER_MESSAGE)
        lists = [queue for _ in self.priority_steps for queue in queues]
        keys = self._lists_of(queues)
        marks = "".join("n" if queue in self._unacknowledged_queues else "a" for queue in lists)
        records = (self.unacked_index_key, self.unacked_key)
        prefix = self.global_keyprefix
        args: list[Argument] = [time.time(), most, marks, *([] if first is None else [first])]
        return lists, [prefix + key for key in (*records, *keys)], args

    def _lists_of(self, queues: list[str]) -> list[str]:
        """The lists holding ``queues``' messages, every queue's at the first priority
        step, then at the next: kombu's order and names (``_q_for_pri``)."""
        keys: list[str] = []
        for step in self.priority_steps:
            priority = self.priority(step)
            keys += [f"{queue}{self.sep}{priority}" for queue in queues] if priority else queues
        return keys

    def _deliver_recorded(self, looked: list[str], messages: list[tuple[str, bytes]]) -> None:
        """Deliver what a take recorded, each queue served going to the end of the order,
        after those it ``looked`` at and found empty."""
        served = {queue for queue, _ in messages}
        for queue in dict.fromkeys(looked):
            if queue not in served:
                self._queue_cycle.rotate(queue)
        self.recorded_by_take = True
        try:
            for queue, raw in messages:
                self._queue_cycle.rotate(queue)
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
        finally:
            self.recorded_by_take = False


@dataclass(frozen=True)
class _Take:
    """A take in flight: the lists it tries, the most it may bring, and the message BRPOP
    took that it records first, if any."""

    lists: list[str]
    most: int
    first: bytes | None


def _read(lists: list[str], reply: list[Any]) -> tuple[list[str], list[tuple[str, bytes]]]:
    """A take's reply: the lists it looked at, and what it took as (queue, message) pairs."""
    looked, taken = reply[0], reply[1:]
    pairs = zip(taken[::2], taken[1::2], strict=True)
    return lists[:looked], [(lists[index - 1], raw) for index, raw in pairs]


def _packed_in_c(connection_class: type[redis.Connection]) -> type[redis.Connection]:
    """``connection_class``, sending what hiredis can pack without redis-py's encoding."""

    class PackedInC(connection_class):  # type: ignore[valid-type,misc]
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            packed = command_packed(args)
            if packed is None:
                super().send_command(*args, **kwargs)
                return
            self.send_packed_command([packed], check_health=kwargs.get("check_health", True))

    return PackedInC


def command_packed(args: tuple[Any, ...]) -> bytes | None:
    """The command ``args`` as redis-py would send it, packed by hiredis; None where
    redis-py must do it: a command named in two words ("CLIENT SETNAME"), which it
    splits, or an argument hiredis does not take, which it refuses with its own error."""
    if not args or (isinstance(args[0], str) and " " in args[0]):
        return None
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError:
        return None
    return packed


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's, with the event loop's readers added only where missing.

        kombu adds every socket of its poller to the loop again at every turn (two turns
        a message): the loop tries to register each anew, the system refuses (it is
        registered), and the loop modifies it instead, an exception and two system calls
        a socket a turn, 0.2 million instructions of a worker's 6.5 a component. A
        socket leaves the loop's readers whenever it leaves its registration (a lost
        connection, a paused ``BRPOP``: kombu removes both together), so one that is
        among them is registered, and is added only once it is not, as kombu adds it.
        """
        before = set(loop.on_tick)
        super().register_with_event_loop(connection, loop)
        added = loop.on_tick - before
        if len(added) != 1:  # not the one turn's callback this replaces: kombu's stays
            return
        cycle = cast(kombu_redis.MultiChannelPoller, self.cycle)  # kombu's Redis poller
        on_readable, readers = self.on_readable, loop.readers
        poll_start = cycle.on_poll_start

        def on_poll_start() -> None:
            poll_start()
            for fd in cycle.fds:
                if readers.get(fd) != (on_readable, (fd,)):
                    loop.add_reader(fd, on_readable, fd)

        loop.on_tick.difference_update(added)
        loop.on_tick.add(on_poll_start)
