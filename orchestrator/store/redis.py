"""The store on Redis: one record shared by coordinators on any number of machines.

A saga step is one Lua script: Redis runs a script to its end before it serves any other
client, so the duplicate check, the revision check and the writes have nobody in between.
Redis does not undo the writes of a script that fails halfway, so the script makes every
check before its first write. The key layout is in :mod:`orchestrator.store.keys`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import redis
from redis.exceptions import RedisError

from orchestrator.contract import Envelope, decode
from orchestrator.redis_calls import PUSHED_IF_BOUND_LUA, Ahead, KeptConnections, Lua
from orchestrator.saga import ReleaseState
from orchestrator.store import (
    KEEP_WAKE,
    PEAK_DRAINED,
    Answered,
    Claim,
    CommitResult,
    DeadLetter,
    Effect,
    Finished,
    Held,
    KeepWake,
    NotHeld,
    Pending,
    Queued,
    Routed,
    StoredRelease,
    StoreUnavailable,
    Word,
    shared,
)
from orchestrator.store.keys import Keys

__all__ = ["RedisStore"]

_T = TypeVar("_T")

# A Redis that stops answering must surface as StoreUnavailable, not hang the coordinator.
_SOCKET_TIMEOUT_S: Final = 5.0
_CONNECT_TIMEOUT_S: Final = 5.0

# KEYS: 1 release hash, 2 its seen set, 3 its timeline, 4 release index, 5 outbox sequence,
#       6 pending outbox ids, 7 outbox bodies, 8 wake index, 9 the release's components,
#       then the seen set of each of the n outbox envelopes, then the broker's list of
#       each envelope handed to the broker, in order.
# ARGV: 1 message id, 2 expected revision ("" for none), 3 "1" when a state is given,
#       4 the release's own fields as JSON, 5 created_at score, 6 release id, 7 outbox
#       count n, 8 wake action ("keep", "set" or "clear"), 9 wake score, 10 component
#       count m, then m (name, "<place> <JSON>") pairs, then n (id, body, message as the
#       broker keeps it or "" to keep it in the outbox) triples, then the timeline.
_COMMIT_LUA: Final = Lua("""
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 'duplicate'
end
if ARGV[2] ~= '' then
  local revision = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
  if revision ~= tonumber(ARGV[2]) then
    return 'conflict'
  end
end
-- every check is done: from here on the script only writes
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'state', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'revision', 1)
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
end
if ARGV[8] == 'set' then
  redis.call('ZADD', KEYS[8], ARGV[9], ARGV[6])
elseif ARGV[8] == 'clear' then
  redis.call('ZREM', KEYS[8], ARGV[6])
end
redis.call('SADD', KEYS[2], ARGV[1])
local at = 11
for _ = 1, tonumber(ARGV[10]) do
  redis.call('HSET', KEYS[9], ARGV[at], ARGV[at + 1])
  at = at + 2
end
local outbox = tonumber(ARGV[7])
local queued = 0
for i = 1, outbox do
  if ARGV[at + 2] == '' then
    local sequence = redis.call('INCR', KEYS[5])
    redis.call('ZADD', KEYS[6], sequence, ARGV[at])
    redis.call('HSET', KEYS[7], ARGV[at], ARGV[at + 1])
  else
    queued = queued + 1
    redis.call('LPUSH', KEYS[9 + outbox + queued], ARGV[at + 2])
  end
  redis.call('SADD', KEYS[9 + i], ARGV[at])
  at = at + 3
end
for i = at, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
return 'committed'
""")

# Leases, outcomes and attempts: functions shared by the scripts that use them. A lease
# is read and then written in one script, so no other owner can take it in between. The
# expiry is a PX on Redis's own clock, which every machine shares, so no two machines can
# disagree on whether a lease has expired.
_WORK_FUNCTIONS_LUA: Final = """
local function take_lease(key, owner, ttl_ms, may_take)
  local holder = redis.call('GET', key)
  if holder == owner or (holder == false and may_take) then
    redis.call('SET', key, owner, 'PX', ttl_ms)
    return true, holder
  end
  return false, holder
end
-- Compare and delete in one step: between a GET and a DEL the lease could expire and be
-- taken by another owner, whose lease a plain DEL would then remove.
local function release_lease(key, owner)
  if redis.call('GET', key) == owner then return redis.call('DEL', key) end
  return 0
end
-- The first outcome recorded is the one kept, and every caller learns which it is in the
-- same step: a later one is ignored, so every copy of a command replays the same event.
local function keep_first(key, body)
  if redis.call('SET', key, body, 'NX') then return body end
  return redis.call('GET', key)
end
-- The size of the set is the next step's place: read and add in one step, so two steps
-- recorded at once cannot take the same place (ties would sort by name, not by order).
local function record_done(key, entry)
  redis.call('ZADD', key, 'NX', redis.call('ZCARD', key), entry)
end
local function count_attempt(key, ttl_ms)
  local count = redis.call('INCR', key)
  redis.call('PEXPIRE', key, ttl_ms)
  return count
end
-- A worker's word: its reports onto the timeline, the time of its last word, and the
-- steps done since, journaled. KEYS from k: the timeline, the last words, then the
-- progress of each step done. ARGV from a: the word, its time, the number of reports n,
-- the n reports, then a JSON [host, step] for each step done, in the order of KEYS.
local function record_word(k, a)
  local n = tonumber(ARGV[a + 2])
  for first = a + 3, a + 2 + n, 500 do  -- in slices: unpack is bounded by Lua's stack
    redis.call('RPUSH', KEYS[k], unpack(ARGV, first, math.min(first + 499, a + 2 + n)))
  end
  redis.call('HSET', KEYS[k + 1], ARGV[a], ARGV[a + 1])
  for i = k + 2, #KEYS do record_done(KEYS[i], ARGV[a + n + 3 + i - k - 2]) end
end
"""

# KEYS: 1 the lease. ARGV: 1 owner, 2 TTL in ms, 3 "1" when a free lease may be taken.
_LEASE_LUA: Final = Lua(
    _WORK_FUNCTIONS_LUA + "return take_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3] == '1') and 1 or 0"
)

# KEYS: 1 the lease. ARGV: 1 owner.
_RELEASE_LEASE_LUA: Final = Lua(_WORK_FUNCTIONS_LUA + "return release_lease(KEYS[1], ARGV[1])")

# KEYS: 1 the outcome. ARGV: 1 the outcome offered.
_KEEP_FIRST_LUA: Final = Lua(_WORK_FUNCTIONS_LUA + "return keep_first(KEYS[1], ARGV[1])")

# KEYS: 1 the outbox's pending ids, 2 its bodies. ARGV: the ids of those published (a
# relay's batch at most: Lua unpacks a few thousand at once).
_MARK_PUBLISHED_LUA: Final = Lua("""
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
""")

# KEYS: 1 the attempts. ARGV: 1 their TTL in ms.
_COUNT_ATTEMPT_LUA: Final = Lua(_WORK_FUNCTIONS_LUA + "return count_attempt(KEYS[1], ARGV[1])")

# KEYS: 1 the work's outcome, 2 the lease, 3 the work's attempts, 4 the release, 5 its
#       components (both "" when not asked), 6 an outcome kept ("" when not asked), then
#       journals.
# ARGV: 1 owner, 2 lease TTL in ms, 3 attempts' TTL in ms, 4 the component asked for.
# Returns {outcome} when finished, {false, holder} when held by another, or {false,
# false, attempts, the release's state, its revision, the component, the outcome kept
# (each false when not asked or not stored), then 1 or 0 for each journal: whether it
# has entries} when taken.
_CLAIM_WORK_LUA: Final = Lua(
    _WORK_FUNCTIONS_LUA
    + """
local outcome = redis.call('GET', KEYS[1])
if outcome then return {outcome} end
local taken, holder = take_lease(KEYS[2], ARGV[1], ARGV[2], true)
if not taken then return {false, holder} end
local claim = {false, false, count_attempt(KEYS[3], ARGV[3]), false, false, false, false}
if KEYS[4] ~= '' then
  claim[4] = redis.call('HGET', KEYS[4], 'state')
  claim[5] = redis.call('HGET', KEYS[4], 'revision')
  claim[6] = redis.call('HGET', KEYS[5], ARGV[4])
end
if KEYS[6] ~= '' then claim[7] = redis.call('GET', KEYS[6]) end
for i = 7, #KEYS do claim[i + 1] = redis.call('EXISTS', KEYS[i]) end
return claim
"""
)

# -1, recording nothing, if another owner holds the lease: a worker whose lease lapsed
# while another took the work over leaves its outcome to that one. A lease that lapsed
# with nobody taking it over is no one's: its work was done under it, and is kept.
# Otherwise the outcome kept; or 1 if it is the one offered and it was pushed where it
# was routed (the bindings it was routed by still the exchange's).
# KEYS: 1 the work's outcome, 2 the lease, 3 the exchange's bindings ("" when not
#       routed), then the l lists it is routed to, then those of record_word, if a last
#       word.
# ARGV: 1 the outcome offered, 2 owner, 3 the outcome as the lists keep it, 4 l, 5 the
#       number of bindings b, then the b bindings, then those of record_word, if a last
#       word.
_FINISH_WORK_LUA: Final = Lua(
    _WORK_FUNCTIONS_LUA
    + PUSHED_IF_BOUND_LUA
    + """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return -1 end
local lists, bindings = tonumber(ARGV[4]), tonumber(ARGV[5])
if #ARGV > 5 + bindings then record_word(4 + lists, 6 + bindings) end
local kept = keep_first(KEYS[1], ARGV[1])
release_lease(KEYS[2], ARGV[2])
if KEYS[3] ~= '' and kept == ARGV[1] then
  local routed_by = {unpack(ARGV, 6, 5 + bindings)}
  if pushed_if_bound(KEYS[3], routed_by, {unpack(KEYS, 4, 3 + lists)}, ARGV[3]) then
    return 1
  end
end
return kept
"""
)

# KEYS: 1 the command's progress. ARGV: 1 JSON [host, step].
_PROGRESS_LUA: Final = Lua(_WORK_FUNCTIONS_LUA + "record_done(KEYS[1], ARGV[1])")

# A worker's word, made under the component's lease (KEYS[1] "" for none): recorded only
# while its maker holds it, so that a worker whose lease lapsed while another took the
# work over neither keeps what its hosts ran nor reports for it. A word made ahead is
# sent after a change it has not had the answer to, which the same check may have
# refused (orchestrator.redis_calls).
# KEYS: 1 the lease ("" for none), 2 an outcome to keep ("" for none), then those of
#       record_word. ARGV: 1 the lease's holder, 2 the outcome offered, then those of
#       record_word.
# Returns false once recorded; -1 if the lease is another's, or the outcome kept before
# if it is not the one offered: then nothing is recorded.
_RECORD_WORD_LUA: Final = Lua(
    _WORK_FUNCTIONS_LUA
    + """
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if KEYS[2] ~= '' then
  local kept = keep_first(KEYS[2], ARGV[2])
  if kept ~= ARGV[2] then return kept end
end
record_word(3, 3)
return false
"""
)

# A change to the simulated fleet and the count of its effect, in one step: 1 if it changed
# anything (and then the effect is counted), 0 if it was so already. A host put out of
# service also raises the service's peak of hosts out at once, if it is a new peak.
# -1, changing nothing, if the change is made under a lease its maker no longer holds.
# KEYS: 1 what changes (a hash of fields, or the set of drained hosts), 2 the release's
#       effects ("" for an uncounted change), 3 the service's state (for the peak),
#       4 the lease the change is made under ("" for none).
# ARGV: 1 "field", "drain" or "undrain", 2 the field or host, 3 the value, 4 the
#       effect's field in KEYS[2], 5 the peak's field, 6 the lease's holder.
_FLEET_CHANGE_LUA: Final = Lua("""
if KEYS[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[6] then return -1 end
local changed
if ARGV[1] == 'field' then
  changed = redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3]
  if changed then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
elseif ARGV[1] == 'drain' then
  changed = redis.call('SADD', KEYS[1], ARGV[2]) == 1
  if changed then
    local out = redis.call('SCARD', KEYS[1])
    if out > tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0') then
      redis.call('HSET', KEYS[3], ARGV[5], out)
    end
  end
else
  changed = redis.call('SREM', KEYS[1], ARGV[2]) == 1
end
if not changed then return 0 end
if KEYS[2] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[4], 1) end
return 1
""")

# The lock scripts read and change many queues at once, and must: a release that joined
# some of its queues but not yet others, or a release released from half of them, is how
# two releases come to wait for each other, or one to start while another holds its lock.
# A script runs alone on Redis, so nobody sees a change half done.
#
# Which queues a release is in, and which releases become holders when it leaves, is known
# only inside the script, so the scripts name those keys themselves from the prefixes the
# caller passes (Keys.lock_queue_prefix, Keys.locks_of_prefix). A single Redis allows it;
# Redis Cluster, which needs every key in KEYS, would not.
# ARGV of every lock script: 1 lock queue prefix, 2 locks-of prefix, 3 release id.
_LOCK_FUNCTIONS_LUA: Final = """
local function queue_of(key) return ARGV[1] .. key end
local function keys_of(release) return ARGV[2] .. release end
local function head(key) return redis.call('ZRANGE', queue_of(key), 0, 0)[1] end
local function holds_all(release)
  for _, key in ipairs(redis.call('ZRANGE', keys_of(release), 0, -1)) do
    if head(key) ~= release then return false end
  end
  return true
end
"""

# KEYS: 1 lock sequence. ARGV: 1-3 as above, then the lock keys. One number per call, so a
# release's entries in the queues it joins together sort alike against everyone else's.
_ACQUIRE_LOCKS_LUA: Final = Lua(
    _LOCK_FUNCTIONS_LUA
    + """
local release, number = ARGV[3], nil
for i = 4, #ARGV do
  if redis.call('ZSCORE', queue_of(ARGV[i]), release) == false then
    number = number or redis.call('INCR', KEYS[1])
    redis.call('ZADD', queue_of(ARGV[i]), number, release)
    redis.call('ZADD', keys_of(release), number, ARGV[i])
  end
end
return holds_all(release) and 1 or 0
"""
)

# ARGV: 1-3 as above. Only the next release in a queue the leaving one headed can become a
# holder; it is returned if it now heads all its queues, ordered by when it first queued.
_RELEASE_LOCKS_LUA: Final = Lua(
    _LOCK_FUNCTIONS_LUA
    + """
local release, freed = ARGV[3], {}
for _, key in ipairs(redis.call('ZRANGE', keys_of(release), 0, -1)) do
  if head(key) == release then table.insert(freed, key) end
  redis.call('ZREM', queue_of(key), release)
end
redis.call('DEL', keys_of(release))
local starting, considered = {}, {}
for _, key in ipairs(freed) do
  local successor = head(key)
  if successor and not considered[successor] then
    considered[successor] = true
    if holds_all(successor) then
      local first = redis.call('ZRANGE', keys_of(successor), 0, 0, 'WITHSCORES')[2]
      table.insert(starting, {tonumber(first), successor})
    end
  end
end
table.sort(starting, function(a, b) return a[1] < b[1] end)
local ids = {}
for i, entry in ipairs(starting) do ids[i] = entry[2] end
return ids
"""
)


@contextmanager
def _translated() -> Iterator[None]:
    """Turn redis-py's errors into Drover's own at this edge.

    ``ConnectionError`` and ``TimeoutError`` both derive from ``RedisError``. redis-py may
    retry a command after a timeout; a retried commit whose first run did land then finds
    its message seen and answers DUPLICATE, which the caller already treats as done.
    """
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"redis: {exc}") from exc


class RedisStore:
    def __init__(self, url: str, namespace: str = "drover") -> None:
        self._keys = Keys(namespace)
        self._url = url
        # Bytes in and out: envelopes and dead letters are bytes, and decoding nothing
        # implicitly means a stored value is never silently re-encoded.
        self._redis = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
        )
        self._calls = KeptConnections(self._redis.connection_pool)
        self._lock_prefixes = [self._keys.lock_queue_prefix, self._keys.locks_of_prefix]
        self._attempt_ttl_ms = _ms(shared.ATTEMPT_COUNT_TTL_S)

    @property
    def _client(self) -> redis.Redis:
        """redis-py's client, for calls off the hot path: on a connection of its own, so
        what this thread sent ahead is read first (Redis keeps no order between two)."""
        self._calls.settle()
        return self._redis

    # --- the saga ---------------------------------------------------------------------

    def load(
        self, release_id: str, components: Collection[str] | None = None
    ) -> StoredRelease | None:
        parts = self._keys.components(release_id)
        with _translated(), self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(self._keys.release(release_id), "state", "revision")
            if components is None:
                pipe.hvals(parts)
            elif components:
                pipe.hmget(parts, list(components))
            (fields, revision), *found = pipe.execute()
        if fields is None:
            return None
        stored = (part for part in (found[0] if found else []) if part is not None)
        state = shared.state_from_record(fields, map(_placed, stored))
        return StoredRelease(state, int(revision or 0))

    def commit(
        self,
        release_id: str,
        *,
        message_id: str,
        expected_revision: int | None,
        state: ReleaseState | None,
        outbox: Sequence[Envelope],
        timeline: Sequence[Envelope],
        wake_at: datetime | KeepWake | None = KEEP_WAKE,
        changed_components: Collection[str] | None = None,
        queued: Mapping[str, Queued] | None = None,
    ) -> CommitResult:
        handed = queued or {}
        keys = [
            self._keys.release(release_id),
            self._keys.seen(release_id),
            self._keys.timeline(release_id),
            self._keys.release_index,
            self._keys.outbox_sequence,
            self._keys.outbox_pending,
            self._keys.outbox_bodies,
            self._keys.wake_index,
            self._keys.components(release_id),
            # an outbox message is seen by the release it names, where it will come back
            *(self._keys.seen(message.release_id) for message in outbox),
            *(handed[message.id].list_key for message in outbox if message.id in handed),
        ]
        fields, components = (
            ("", []) if state is None else shared.release_record(state, changed_components)
        )
        args: list[str | bytes | int | float] = [
            message_id,
            "" if expected_revision is None else expected_revision,
            "0" if state is None else "1",
            fields,
            0.0 if state is None else state.created_at.timestamp(),
            release_id,
            len(outbox),
            *_wake_args(wake_at),
            len(components),
        ]
        for name, place, component in components:
            args += [name, f"{place} {component}"]
        for message in outbox:
            on_queue = handed.get(message.id)
            args += [message.id, message.encode(), on_queue.raw if on_queue else ""]
        args += [message.encode() for message in timeline]
        with _translated():
            result = self._calls.script(_COMMIT_LUA, keys, args)
        return CommitResult(_text(result))

    def shares_redis_with(self, broker_url: str) -> bool:
        return broker_url == self._url

    def due(self, now: datetime, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        with _translated():
            ids = self._client.zrangebyscore(
                self._keys.wake_index, "-inf", shared.epoch_s(now), start=0, num=limit
            )
        return [_text(release_id) for release_id in ids]

    def pending_outbox(self, limit: int = 500) -> list[Envelope]:
        if limit <= 0:
            return []
        with _translated():
            ids = self._client.zrange(self._keys.outbox_pending, 0, limit - 1)
            if not ids:
                return []
            bodies = self._client.hmget(self._keys.outbox_bodies, [_bytes(i) for i in ids])
        # a body published between the two reads is gone, and rightly skipped
        return [decode(_bytes(body)) for body in bodies if body is not None]

    def mark_published(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        keys = [self._keys.outbox_pending, self._keys.outbox_bodies]
        with _translated():
            self._calls.script(_MARK_PUBLISHED_LUA, keys, message_ids)

    def timeline(self, release_id: str, start: int = 0) -> list[Envelope]:
        with _translated():
            bodies = self._client.lrange(self._keys.timeline(release_id), max(start, 0), -1)
        return [decode(_bytes(body)) for body in bodies]

    def record_reports(self, word: Word, under: Held | None = None) -> Envelope | None:
        with _translated():
            reply = self._calls.script(_RECORD_WORD_LUA, *self._word_under(word, under))
        return _held(under, _kept_before)(reply)

    def record_reports_ahead(self, word: Word, under: Held | None = None) -> Pending[None]:
        if under is None:  # unfenced: not sent before the answers it would come after
            shared.recorded_ahead(word, self.record_reports(word))
            return Answered(None)
        if word.keep is None:
            recorded = _held(under, _recorded)
        else:
            recorded = _held(under, lambda reply: shared.recorded_ahead(word, _kept_before(reply)))
        return self._ahead(_RECORD_WORD_LUA, *self._word_under(word, under), recorded)

    def forget_ahead(self) -> None:
        self._calls.forget()

    def _word(
        self, word: Word, keys: list[str], args: list[str | bytes]
    ) -> tuple[list[str], list[str | bytes]]:
        """A script's ``keys`` and ``args``, then those of its ``record_word``."""
        keys += [self._keys.timeline(word.release_id), self._keys.last_words(word.release_id)]
        keys += [self._keys.progress(d.command_id) for d in word.done]
        args += [word.key, repr(shared.epoch_s(word.at)), str(len(word.reports))]
        args += [m.encode() for m in word.reports]
        args += [json.dumps([d.host, d.step]) for d in word.done]
        return keys, args

    def _word_under(self, word: Word, under: Held | None) -> tuple[list[str], list[str | bytes]]:
        """The keys and arguments of ``_RECORD_WORD_LUA``."""
        lease, owner = (self._keys.lease(under.lease), under.owner) if under else ("", "")
        if word.keep is None:
            return self._word(word, [lease, ""], [owner, b""])
        key, offered = word.keep
        return self._word(word, [lease, self._keys.outcome(key)], [owner, offered.encode()])

    def last_words(self, release_id: str, words: Collection[str]) -> dict[str, datetime]:
        wanted = list(words)
        if not wanted:
            return {}
        with _translated():
            found = self._client.hmget(self._keys.last_words(release_id), wanted)
        return {
            word: shared.from_epoch_s(float(at))
            for word, at in zip(wanted, found, strict=True)
            if at is not None
        }

    def releases(self, limit: int = 50) -> list[ReleaseState]:
        if limit <= 0:
            return []
        with _translated():
            ids = self._client.zrevrange(self._keys.release_index, 0, limit - 1)
            with self._client.pipeline(transaction=False) as pipe:
                for release_id in ids:
                    pipe.hget(self._keys.release(_text(release_id)), "state")
                    pipe.hvals(self._keys.components(_text(release_id)))
                found = pipe.execute()
        records = zip(found[::2], found[1::2], strict=True)
        return [
            shared.state_from_record(fields, map(_placed, components))
            for fields, components in records
            if fields
        ]

    # --- the fleet's record -------------------------------------------------------------

    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        # Past redis-py's client (orchestrator.redis_calls): read for every component.
        key = self._keys.host_versions(environment, service)
        with _translated():
            versions = self._calls.command("HGETALL", key)
        return {_text(host): _text(version) for host, version in _fields(versions)}

    def set_host_version(
        self, environment: str, service: str, host: str, version: str, effect: Effect | None
    ) -> Pending[bool]:
        key = self._keys.host_versions(environment, service)
        return self._change_fleet(
            key, "field", host, version, environment=environment, service=service, effect=effect
        )

    def effects(self, release_id: str) -> dict[tuple[str, str, str, str], int]:
        with _translated():
            counts = self._client.hgetall(self._keys.effects(release_id))
        return {_effect_key(field): int(count) for field, count in counts.items()}

    def drained_hosts(self, environment: str, service: str) -> set[str]:
        with _translated():
            hosts = self._client.smembers(self._keys.drained(environment, service))
        return {_text(host) for host in hosts}

    def set_drained(
        self, environment: str, service: str, host: str, drained: bool, effect: Effect | None
    ) -> Pending[bool]:
        key = self._keys.drained(environment, service)
        change = "drain" if drained else "undrain"
        return self._change_fleet(
            key, change, host, "", environment=environment, service=service, effect=effect
        )

    def service_state(self, environment: str, service: str) -> dict[str, str]:
        with _translated():
            state = self._client.hgetall(self._keys.service_state(environment, service))
        return {_text(field): _text(value) for field, value in state.items()}

    def set_service_state(
        self, environment: str, service: str, field: str, value: str, effect: Effect | None
    ) -> Pending[bool]:
        key = self._keys.service_state(environment, service)
        return self._change_fleet(
            key, "field", field, value, environment=environment, service=service, effect=effect
        )

    def _change_fleet(
        self,
        key: str,
        change: str,
        member: str,
        value: str,
        *,
        environment: str,
        service: str,
        effect: Effect | None,
    ) -> Pending[bool]:
        effects = self._keys.effects(effect.release_id) if effect else ""
        counted = json.dumps([environment, service, effect.host, effect.step]) if effect else ""
        held = effect.under if effect else None
        lease, owner = (self._keys.lease(held.lease), held.owner) if held else ("", "")
        keys = [key, effects, self._keys.service_state(environment, service), lease]
        args = [change, member, value, counted, PEAK_DRAINED, owner]
        return self._ahead(_FLEET_CHANGE_LUA, keys, args, _held(held, bool))

    def _ahead(
        self,
        script: Lua,
        keys: Sequence[str],
        args: Sequence[str | bytes],
        answer: Callable[[int], _T],
    ) -> Pending[_T]:
        """``script`` sent without waiting for its answer (orchestrator.redis_calls)."""
        with _translated():
            return _Translated(self._calls.script_ahead(script, keys, args, answer))

    # --- notes ---------------------------------------------------------------------------

    def set_note(self, key: str, value: str) -> None:
        with _translated():
            self._client.hset(self._keys.notes, key, value)

    def note(self, key: str) -> str | None:
        with _translated():
            value = self._client.hget(self._keys.notes, key)
        return None if value is None else _text(value)

    def delete_note(self, key: str) -> bool:
        with _translated():
            return bool(self._client.hdel(self._keys.notes, key))

    def notes(self, prefix: str) -> dict[str, str]:
        # HSCAN's MATCH is a glob: the prefix's own glob characters are escaped.
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        with _translated():
            found = self._client.hscan_iter(self._keys.notes, match=pattern, count=500)
            return {_text(k): _text(v) for k, v in found}

    # --- workers: one owner per component, and what each command did ----------------------

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return self._lease(name, owner, ttl_s, may_take=True)

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return self._lease(name, owner, ttl_s, may_take=False)

    def _lease(self, name: str, owner: str, ttl_s: float, *, may_take: bool) -> bool:
        args: list[str | int] = [owner, _ms(shared.lease_ttl_s(ttl_s)), "1" if may_take else "0"]
        with _translated():
            return bool(self._calls.script(_LEASE_LUA, [self._keys.lease(name)], args))

    def release_lease(self, name: str, owner: str) -> None:
        with _translated():
            self._calls.script(_RELEASE_LEASE_LUA, [self._keys.lease(name)], [owner])

    def lease_holder(self, name: str) -> str | None:
        with _translated():
            holder = self._client.get(self._keys.lease(name))
        return None if holder is None else _text(holder)

    def record_progress(self, command_id: str, host: str, step: str) -> None:
        done = json.dumps([host, step])
        with _translated():
            self._calls.script(_PROGRESS_LUA, [self._keys.progress(command_id)], [done])

    def progress(self, command_id: str) -> dict[str, list[str]]:
        with _translated():
            done = self._client.zrange(self._keys.progress(command_id), 0, -1)
        return shared.steps_by_host(_host_step(entry) for entry in done)

    def record_outcome(self, command_id: str, outcome: Envelope) -> Envelope:
        key = self._keys.outcome(command_id)
        with _translated():
            kept = self._calls.script(_KEEP_FIRST_LUA, [key], [outcome.encode()])
        return shared.kept_outcome(outcome, _bytes(kept))

    def outcome(self, command_id: str) -> Envelope | None:
        with _translated():
            body = self._client.get(self._keys.outcome(command_id))
        return None if body is None else decode(_bytes(body))

    def count_attempt(self, message_id: str) -> int:
        key = self._keys.attempts(message_id)
        with _translated():
            return int(self._calls.script(_COUNT_ATTEMPT_LUA, [key], [self._attempt_ttl_ms]))

    def claim_work(
        self,
        work: str,
        lease: str,
        owner: str,
        ttl_s: float,
        *,
        journals: Sequence[str] = (),
        component: tuple[str, str] | None = None,
        kept: str | None = None,
    ) -> Claim:
        release_id, name = component or ("", "")
        release_keys = ["", ""]  # the script reads no release
        if component:
            release_keys = [self._keys.release(release_id), self._keys.components(release_id)]
        keys = [self._keys.outcome(work), self._keys.lease(lease), self._keys.attempts(work)]
        keys += [*release_keys, self._keys.outcome(kept) if kept else ""]
        keys += [self._keys.progress(journal) for journal in journals]
        args: list[str | int] = [owner, _ms(shared.lease_ttl_s(ttl_s)), self._attempt_ttl_ms, name]
        with _translated():
            found = self._calls.script(_CLAIM_WORK_LUA, keys, args)
        if found[0] is not None:
            return Claim(outcome=decode(_bytes(found[0])), taken=False, holder=None, attempts=0)
        if len(found) == 2:
            holder = None if found[1] is None else _text(found[1])
            return Claim(outcome=None, taken=False, holder=holder, attempts=0)
        state, revision, part, kept_body = found[3:7]
        release = None
        if state is not None:
            parts = [] if part is None else [_placed(part)]
            release = StoredRelease(shared.state_from_record(state, parts), int(revision or 0))
        journaled = frozenset(j for j, has in zip(journals, found[7:], strict=True) if has)
        return Claim(
            outcome=None,
            taken=True,
            holder=None,
            attempts=int(found[2]),
            journaled=journaled,
            release=release,
            kept=None if kept_body is None else decode(_bytes(kept_body)),
        )

    def finish_work(
        self,
        work: str,
        outcome: Envelope,
        lease: str,
        owner: str,
        last: Word | None = None,
        *,
        routed: Routed | None = None,
    ) -> Finished:
        keys: list[str] = [self._keys.outcome(work), self._keys.lease(lease)]
        args: list[str | bytes] = [outcome.encode(), owner]
        if routed is None:
            keys.append("")
            args += ["", "0", "0"]
        else:
            keys += [routed.bindings_key, *routed.list_keys]
            args += [routed.raw, str(len(routed.list_keys)), str(len(routed.bindings))]
            args += routed.bindings
        if last is not None:
            keys, args = self._word(last, keys, args)
        with _translated():
            reply = self._calls.script(_FINISH_WORK_LUA, keys, args)
        if reply == 1:
            return Finished(outcome, routed=True)
        held = _held(Held(lease, owner), _bytes)
        return Finished(shared.kept_outcome(outcome, held(reply)), routed=False)

    # --- locks: one release at a time per (environment, service) ---------------------------

    def acquire_locks(self, release_id: str, keys: Sequence[str]) -> bool:
        args = [*self._lock_prefixes, release_id, *keys]
        with _translated():
            holds = self._calls.script(_ACQUIRE_LOCKS_LUA, [self._keys.lock_sequence], args)
        return bool(holds)

    def release_locks(self, release_id: str) -> list[str]:
        args = [*self._lock_prefixes, release_id]
        with _translated():
            starting = self._calls.script(_RELEASE_LOCKS_LUA, [], args)
        return [_text(release) for release in starting]

    def lock_queue(self, key: str) -> list[str]:
        with _translated():
            releases = self._client.zrange(self._keys.lock_queue(key), 0, -1)
        return [_text(release) for release in releases]

    def locks_of(self, release_id: str) -> list[str]:
        with _translated():
            keys = self._client.zrange(self._keys.locks_of(release_id), 0, -1)
        return [_text(key) for key in keys]

    # --- messages nobody could use --------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with _translated():
            number = self._client.incr(self._keys.dead_letter_sequence)
            # NX on both: a letter added again keeps its first body and its place
            with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._keys.dead_letter_order, {letter.id: number}, nx=True)
                pipe.hsetnx(self._keys.dead_letter_bodies, letter.id, _dump_dead_letter(letter))
                pipe.execute()

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with _translated():
            ids = self._client.zrange(self._keys.dead_letter_order, 0, limit - 1)
            if not ids:
                return []
            letters = self._client.hmget(self._keys.dead_letter_bodies, [_bytes(i) for i in ids])
        # a letter removed between the two reads is gone, and rightly skipped
        return [_load_dead_letter(_bytes(letter)) for letter in letters if letter is not None]

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        with _translated():
            letter = self._client.hget(self._keys.dead_letter_bodies, letter_id)
        return None if letter is None else _load_dead_letter(_bytes(letter))

    def remove_dead_letter(self, letter_id: str) -> bool:
        with _translated(), self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.dead_letter_order, letter_id)
            pipe.hdel(self._keys.dead_letter_bodies, letter_id)
            _, removed = pipe.execute()
        return bool(removed)

    def durability_problems(self) -> list[str]:
        with _translated():
            raw = {
                **self._client.config_get("appendonly"),
                **self._client.config_get("maxmemory-policy"),
            }
        # CONFIG GET answers in str or bytes depending on the client's protocol version.
        config = {_either(k): _either(v) for k, v in raw.items()}
        found = []
        policy = config.get("maxmemory-policy", "")
        if policy != "noeviction":
            found.append(
                f"maxmemory-policy is {policy!r}: under memory pressure Redis may evict saga "
                "state; set it to 'noeviction'"
            )
        if config.get("appendonly") != "yes":
            found.append(
                "appendonly is off: a Redis restart loses every release in flight; "
                "set 'appendonly yes'"
            )
        return found

    def close(self) -> None:
        self._redis.close()  # what a thread sent ahead and never read is dropped with it


class _Translated(Generic[_T]):
    """A write sent ahead, whose errors are Drover's when it is waited for."""

    __slots__ = ("_ahead",)

    def __init__(self, ahead: Ahead[_T]):
        self._ahead = ahead

    def done(self) -> bool:
        return self._ahead.done()

    def wait(self) -> _T:
        with _translated():
            return self._ahead.wait()


def _held(under: Held | None, answer: Callable[[Any], _T]) -> Callable[[Any], _T]:
    """The ``answer`` of a write made ``under`` a lease, or NotHeld when its maker no
    longer held the lease (-1: the script wrote nothing)."""

    def checked(reply: Any) -> _T:
        if reply == -1:
            assert under is not None  # only a write made under a lease is refused
            raise NotHeld(f"{under.owner} no longer holds {under.lease}")
        return answer(reply)

    return checked


def _recorded(_reply: None) -> None:
    """A word's answer when it keeps nothing: it was recorded."""


def _kept_before(reply: bytes | None) -> Envelope | None:
    """The outcome another kept first, when a word offered one (it recorded nothing)."""
    return None if reply is None else decode(_bytes(reply))


def _fields(reply: dict[bytes, bytes] | list[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """A hash's fields and values as Redis answers ``HGETALL``: a map on RESP3, a flat
    list of field, value, field, value on RESP2 (which a URL may ask for)."""
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=True)


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _placed(component: object) -> tuple[int, bytes]:
    """A component's place and JSON from its stored value, "<place> <JSON>"."""
    place, _, json_ = _bytes(component).partition(b" ")
    return int(place), json_


def _wake_args(wake_at: datetime | KeepWake | None) -> list[str | float]:
    """The script's wake action and score arguments."""
    if wake_at is KEEP_WAKE:
        return ["keep", 0.0]
    if wake_at is None:
        return ["clear", 0.0]
    return ["set", shared.epoch_s(wake_at)]


def _host_step(entry: object) -> tuple[str, str]:
    host, step = json.loads(_bytes(entry))
    return str(host), str(step)


def _effect_key(field: bytes | str) -> tuple[str, str, str, str]:
    environment, service, host, step = json.loads(field)
    return str(environment), str(service), str(host), str(step)


def _dump_dead_letter(letter: DeadLetter) -> str:
    return json.dumps(
        {
            "id": letter.id,
            "at": letter.at.isoformat(),
            "reason": letter.reason,
            # JSON holds text only; the raw bytes may be anything, so base64
            "raw": base64.b64encode(letter.raw).decode("ascii"),
            "source": letter.source,
        }
    )


def _load_dead_letter(stored: bytes) -> DeadLetter:
    data = json.loads(stored)
    return DeadLetter(
        id=data["id"],
        at=datetime.fromisoformat(data["at"]),
        reason=data["reason"],
        raw=base64.b64decode(data["raw"]),
        source=data["source"],
    )


def _bytes(value: object) -> bytes:
    """A value as Redis sent it: bytes, since the client is told to decode nothing."""
    if isinstance(value, bytes):
        return value
    raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")


def _either(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(value: object) -> str:
    return _bytes(value).decode()
