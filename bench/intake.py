"""Intake: taking commands off the queues of a worker that serves many services, on Redis.

A worker serving a thousand services waits on a thousand lists. kombu's Redis transport
takes one message per poll with a ``BRPOP`` naming every list; a batched intake would
take several per call. This measures the two on Redis alone (no kombu, no Celery), in
P1's shape: ``BENCH_P1_COMPONENTS`` lists (1,000) with one command-sized message in each,
taken until all are gone:

* ``BRPOP`` naming every list, one message a call, as kombu does;
* one Lua call that takes up to ``BENCH_INTAKE_BATCH`` (16) messages across the lists,
  the first non-empty ones in order. (``BLMPOP`` takes up to a count from *one* list,
  which does not help when each service has one command waiting.)

It prices the intake's own cost, which P1's batched intake would remove; a worker would
still lease, journal and acknowledge each command on its own. ``--broker`` is ignored:
this is Redis's figure.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Final

import redis

from bench.measure import Figure, side_by_side
from bench.options import Options
from bench.processes import forget_keys
from bench.wide import COMPONENTS

__all__ = ["run"]

BATCH: Final = int(os.environ.get("BENCH_INTAKE_BATCH", "16"))
_BODY: Final = b"x" * 1200  # about the size of a Celery task message carrying a command

# KEYS: the lists, in the order to try them. ARGV: 1 the most to take.
_TAKE_LUA: Final = """
local taken = {}
for i = 1, #KEYS do
  local message = redis.call('RPOP', KEYS[i])
  if message then
    taken[#taken + 1] = message
    if #taken >= tonumber(ARGV[1]) then break end
  end
end
return taken
"""


def run(options: Options) -> list[Figure]:
    client = redis.Redis.from_url(options.redis_url)
    namespace = f"bench-intake-{uuid.uuid4().hex[:10]}"
    lists = [f"{namespace}.svc.{i:05d}" for i in range(COMPONENTS)]
    take = client.register_script(_TAKE_LUA)

    def brpop_rate() -> float:
        _fill(client, lists)
        started = time.perf_counter()
        for _ in lists:
            client.brpop(lists, timeout=1)
        return len(lists) / (time.perf_counter() - started)

    def batched_rate() -> float:
        _fill(client, lists)
        taken = 0
        started = time.perf_counter()
        while taken < len(lists):
            taken += len(take(keys=lists, args=[BATCH]))
        return len(lists) / (time.perf_counter() - started)

    try:
        batched, one = side_by_side(
            options.runs,
            (f"one Lua call takes up to {BATCH}", "msg/s", batched_rate),
            ("BRPOP naming every list", "msg/s", brpop_rate),
        )
    finally:
        client.close()
        forget_keys(options.redis_url, namespace)
    notes = {"lists": COMPONENTS, "batch": BATCH, "message_bytes": len(_BODY)}
    sides = ("batched", "brpop")
    return [Figure(f"intake over {COMPONENTS} lists", batched, one, notes=notes, sides=sides)]


def _fill(client: redis.Redis, lists: list[str]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for name in lists:
            pipe.lpush(name, _BODY)
        pipe.execute()
