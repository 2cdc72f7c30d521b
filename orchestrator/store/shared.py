"""What both stores share, so that SQLite and Redis answer alike: times, TTLs, grouping."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

__all__ = ["ATTEMPT_COUNT_TTL_S", "epoch_s", "lease_ttl_s", "steps_by_host"]

# How long a command's attempt count is kept after its last attempt. A broker gives up
# redelivering long before this; without a limit the counters would grow forever.
# Read when a store is opened.
ATTEMPT_COUNT_TTL_S: Final = 7 * 24 * 3600.0


def epoch_s(at: datetime) -> float:
    """Seconds since the epoch: the sort key both stores keep for a point in time.

    A naive datetime is refused: read in each machine's local zone, it would name a
    different instant on each, and wake-ups would fire hours early or late.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a time zone is required, got the naive datetime {at.isoformat()}")
    return at.timestamp()


def lease_ttl_s(ttl_s: float) -> float:
    """The TTL of a lease, refused unless positive: a lease that is over before it starts
    is a caller's bug, not a lease."""
    if not ttl_s > 0:
        raise ValueError(f"a lease needs a positive TTL, got {ttl_s!r} s")
    return ttl_s


def steps_by_host(done: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``host -> steps`` from ``(host, step)`` pairs, keeping the order they came in."""
    progress: dict[str, list[str]] = {}
    for host, step in done:
        progress.setdefault(host, []).append(step)
    return progress
