"""The store on Redis: one record shared by coordinators on any number of machines.

A saga step is one Lua script: Redis runs a script to its end before it serves any other
client, so the duplicate check, the revision check and the writes have nobody in between.
Redis does not undo the writes of a script that fails halfway, so the script makes every
check before its first write. The key layout is in :mod:`orchestrator.store.keys`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Final

import redis
from redis.exceptions import RedisError

from orchestrator.contract import Envelope, decode
from orchestrator.saga import ReleaseState
from orchestrator.store import CommitResult, DeadLetter, StoredRelease, StoreUnavailable
from orchestrator.store.keys import Keys

__all__ = ["RedisStore"]

# A Redis that stops answering must surface as StoreUnavailable, not hang the coordinator.
_SOCKET_TIMEOUT_S: Final = 5.0
_CONNECT_TIMEOUT_S: Final = 5.0

# KEYS: 1 release hash, 2 its seen set, 3 its timeline, 4 release index, 5 outbox sequence,
#       6 pending outbox ids, 7 outbox bodies, then the seen set of each outbox envelope.
# ARGV: 1 message id, 2 expected revision, 3 "1" when a state is given, 4 state JSON,
#       5 created_at score, 6 release id, 7 outbox count n, then n (id, body) pairs,
#       then the timeline bodies.
_COMMIT_LUA: Final = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 'duplicate'
end
local has_state = ARGV[3] == '1'
if has_state then
  local revision = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
  if revision ~= tonumber(ARGV[2]) then
    return 'conflict'
  end
end
-- every check is done: from here on the script only writes
if has_state then
  redis.call('HSET', KEYS[1], 'state', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'revision', 1)
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
end
redis.call('SADD', KEYS[2], ARGV[1])
local outbox_count = tonumber(ARGV[7])
for i = 1, outbox_count do
  local id = ARGV[6 + 2 * i]
  local sequence = redis.call('INCR', KEYS[5])
  redis.call('ZADD', KEYS[6], sequence, id)
  redis.call('HSET', KEYS[7], id, ARGV[7 + 2 * i])
  redis.call('SADD', KEYS[7 + i], id)
end
for i = 8 + 2 * outbox_count, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
return 'committed'
"""


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
        # Bytes in and out: envelopes and dead letters are bytes, and decoding nothing
        # implicitly means a stored value is never silently re-encoded.
        self._client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
        )
        # Registered once: later calls send only the script's SHA (EVALSHA).
        self._commit_script = self._client.register_script(_COMMIT_LUA)

    # --- the saga ---------------------------------------------------------------------

    def load(self, release_id: str) -> StoredRelease | None:
        with _translated():
            state, revision = self._client.hmget(
                self._keys.release(release_id), "state", "revision"
            )
        if state is None:
            return None
        return StoredRelease(ReleaseState.model_validate_json(state), int(revision or 0))

    def commit(
        self,
        release_id: str,
        *,
        message_id: str,
        expected_revision: int,
        state: ReleaseState | None,
        outbox: Sequence[Envelope],
        timeline: Sequence[Envelope],
    ) -> CommitResult:
        keys = [
            self._keys.release(release_id),
            self._keys.seen(release_id),
            self._keys.timeline(release_id),
            self._keys.release_index,
            self._keys.outbox_sequence,
            self._keys.outbox_pending,
            self._keys.outbox_bodies,
            # an outbox message is seen by the release it names, where it will come back
            *(self._keys.seen(message.release_id) for message in outbox),
        ]
        args: list[str | bytes | int | float] = [
            message_id,
            expected_revision,
            *_state_args(state),
            release_id,
            len(outbox),
        ]
        for message in outbox:
            args += [message.id, message.encode()]
        args += [message.encode() for message in timeline]
        with _translated():
            result = self._commit_script(keys=keys, args=args)
        return CommitResult(_text(result))

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
        with _translated(), self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.outbox_pending, *message_ids)
            pipe.hdel(self._keys.outbox_bodies, *message_ids)
            pipe.execute()

    def timeline(self, release_id: str) -> list[Envelope]:
        with _translated():
            bodies = self._client.lrange(self._keys.timeline(release_id), 0, -1)
        return [decode(_bytes(body)) for body in bodies]

    def releases(self, limit: int = 50) -> list[ReleaseState]:
        if limit <= 0:
            return []
        with _translated():
            ids = self._client.zrevrange(self._keys.release_index, 0, limit - 1)
            with self._client.pipeline(transaction=False) as pipe:
                for release_id in ids:
                    pipe.hget(self._keys.release(_text(release_id)), "state")
                states = pipe.execute()
        return [ReleaseState.model_validate_json(s) for s in states if s is not None]

    # --- the fleet's record -------------------------------------------------------------

    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        with _translated():
            versions = self._client.hgetall(self._keys.host_versions(environment, service))
        return {_text(host): _text(version) for host, version in versions.items()}

    def record_host_version(self, environment: str, service: str, host: str, version: str) -> None:
        with _translated():
            self._client.hset(self._keys.host_versions(environment, service), host, version)

    def count_effect(
        self, release_id: str, environment: str, service: str, host: str, step: str
    ) -> int:
        field = json.dumps([environment, service, host, step])
        with _translated():
            return int(self._client.hincrby(self._keys.effects(release_id), field, 1))

    def effects(self, release_id: str) -> dict[tuple[str, str, str, str], int]:
        with _translated():
            counts = self._client.hgetall(self._keys.effects(release_id))
        return {_effect_key(field): int(count) for field, count in counts.items()}

    # --- messages nobody could use --------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with _translated():
            self._client.rpush(self._keys.dead_letters, _dump_dead_letter(letter))

    def dead_letters(self) -> list[DeadLetter]:
        with _translated():
            letters = self._client.lrange(self._keys.dead_letters, 0, -1)
        return [_load_dead_letter(_bytes(letter)) for letter in letters]

    def close(self) -> None:
        self._client.close()


def _state_args(state: ReleaseState | None) -> list[str | float]:
    """The script's "has state", state JSON and created_at score arguments."""
    if state is None:
        return ["0", "", 0.0]
    return ["1", state.model_dump_json(), state.created_at.timestamp()]


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


def _text(value: object) -> str:
    return _bytes(value).decode()
