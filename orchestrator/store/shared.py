"""What both stores share, so that SQLite and Redis answer alike: times, TTLs, grouping."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from orchestrator.contract import Envelope, decode
from orchestrator.saga import ComponentState, ReleaseState
from orchestrator.store import NotHeld

if TYPE_CHECKING:
    from orchestrator.store import Word

__all__ = [
    "ATTEMPT_COUNT_TTL_S",
    "ReleaseRecord",
    "epoch_s",
    "from_epoch_s",
    "kept_outcome",
    "lease_ttl_s",
    "recorded_ahead",
    "release_record",
    "state_from_record",
    "steps_by_host",
]

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


def from_epoch_s(seconds: float) -> datetime:
    """The instant :func:`epoch_s` stored, in UTC."""
    return datetime.fromtimestamp(seconds, UTC)


def kept_outcome(offered: Envelope, kept: bytes) -> Envelope:
    """The outcome a store kept for a command: the one offered, unless another was first."""
    # Most often it is the one offered: the bytes tell, without reading them again.
    return offered if kept == offered.encode() else decode(kept)


def recorded_ahead(word: Word, kept_before: Envelope | None) -> None:
    """A word made ahead was recorded, unless what it kept was kept first by another
    (``kept_before``): then nothing of it was, and its maker may no more go on than one
    whose lease is another's. A word keeps what the hosts ran before the first effect,
    under the lease its maker took; only a holder before it can have kept something."""
    if kept_before is not None:
        assert word.keep is not None  # only a word that keeps is refused for it
        raise NotHeld(f"another worker's {kept_before.type} was kept first under {word.keep[0]}")


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


# A release is kept as its own fields and one record per component, so that a commit
# writes the components that changed rather than the whole release: a report from one
# host of a thousand-component release must not cost a thousand components' JSON. Each
# component keeps its place in the release, which a store's own order would lose.
ComponentRecord = tuple[str, int, str]  # (name, place in the release, ComponentState JSON)
ReleaseRecord = tuple[str, list[ComponentRecord]]  # (the release's own fields, components)


def release_record(state: ReleaseState, changed: Collection[str] | None) -> ReleaseRecord:
    """The JSON to write for ``state``: its own fields, and the ``changed`` components
    (all of them when ``changed`` is None)."""
    places = state.index.places(state.components)
    names = state.components.keys() if changed is None else changed
    components = [(name, places[name], state.components[name].model_dump_json()) for name in names]
    return state.model_dump_json(exclude={"components"}), components


def state_from_record(
    fields: str | bytes, components: Iterable[tuple[int, str | bytes]]
) -> ReleaseState:
    """The release a :func:`release_record` wrote, from its fields and (place, JSON) of
    each component, put back together in the release's order."""
    ordered = sorted(components, key=lambda component: component[0])
    parsed = (ComponentState.model_validate_json(json) for _, json in ordered)
    release = ReleaseState.model_validate_json(fields)
    return release.model_copy(update={"components": {c.name: c for c in parsed}})
