"""Locks on a service in an environment: the one two releases may not hold at once, and
the ones people take by hand (``drover lock prod/payments "freeze" --for 2h``).

A person's lock joins the same first-come queue as releases, under a holder name no
release id can take (``hold:<env>/<service>``): releases that come after it wait, a
release already holding the service finishes first. Who took it, why and until when is
a note in the store; the coordinator lets a lock go when its time is up. Every lock,
unlock, forced unlock and expiry is kept in the lock history.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from orchestrator.store import Store

__all__ = [
    "LockHeld",
    "ManualLock",
    "NotLocked",
    "NotYours",
    "current",
    "expire",
    "history",
    "holder_of",
    "lock",
    "lock_key",
    "unlock",
]

_NOTE = "lock/"
_HISTORY = "lock-history/"


def lock_key(environment: str, service: str) -> str:
    """What two releases must not hold at once: one service in one environment."""
    return f"{environment}/{service}"


def holder_of(environment: str, service: str) -> str:
    # ":" and "/" cannot appear in a release id: no release can be mistaken for a lock.
    return f"hold:{lock_key(environment, service)}"


class ManualLock(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str
    service: str
    owner: str
    reason: str
    since: datetime
    until: datetime | None = None  # None: until someone unlocks it


class LockHeld(Exception):
    def __init__(self, holder: ManualLock):
        self.holder = holder
        super().__init__(f"{holder.environment}/{holder.service} is locked by {holder.owner}")


class NotLocked(Exception):
    pass


class NotYours(Exception):
    def __init__(self, holder: ManualLock):
        self.holder = holder
        super().__init__(
            f"{holder.environment}/{holder.service} is locked by {holder.owner}: "
            "unlock it with force, which is recorded"
        )


def lock(
    store: Store,
    environment: str,
    service: str,
    *,
    owner: str,
    reason: str,
    for_s: float | None,
    now: datetime,
) -> ManualLock:
    """Take (or, for its owner, renew) the lock; LockHeld if someone else has it."""
    existing = _read(store, environment, service)
    if existing is not None and existing.owner != owner:
        raise LockHeld(existing)
    until = now + timedelta(seconds=for_s) if for_s else None
    taken = ManualLock(
        environment=environment,
        service=service,
        owner=owner,
        reason=reason,
        since=existing.since if existing else now,
        until=until,
    )
    # The note first: a crash before the queue is joined leaves a lock that the owner's
    # next call (or its expiry) completes, never a queue entry nobody can explain.
    store.set_note(_NOTE + lock_key(environment, service), taken.model_dump_json())
    store.acquire_locks(holder_of(environment, service), [lock_key(environment, service)])
    _remember(store, "locked", taken, owner, now)
    return taken


def unlock(
    store: Store, environment: str, service: str, *, actor: str, force: bool, now: datetime
) -> ManualLock:
    """Let the lock go; NotLocked if there is none, NotYours if another's and not forced."""
    existing = _read(store, environment, service)
    if existing is None:
        raise NotLocked(f"{lock_key(environment, service)} is not locked")
    if existing.owner != actor and not force:
        raise NotYours(existing)
    _let_go(store, existing)
    action = "unlocked" if existing.owner == actor else "unlocked by force"
    _remember(store, action, existing, actor, now)
    return existing


def current(store: Store) -> list[ManualLock]:
    return sorted(
        (ManualLock.model_validate_json(v) for v in store.notes(_NOTE).values()),
        key=lambda held: (held.environment, held.service),
    )


def expire(store: Store, now: datetime) -> list[ManualLock]:
    """Let every lock whose time is up go (the coordinator asks, every tick)."""
    expired = [held for held in current(store) if held.until is not None and held.until <= now]
    for held in expired:
        _let_go(store, held)
        _remember(store, "expired", held, "drover-coordinator", now)
    return expired


def history(store: Store, limit: int = 50) -> list[dict[str, str]]:
    """What happened to locks, newest first."""
    entries = [json.loads(v) for v in store.notes(_HISTORY).values()]
    return sorted(entries, key=lambda e: e["at"], reverse=True)[:limit]


def _read(store: Store, environment: str, service: str) -> ManualLock | None:
    raw = store.note(_NOTE + lock_key(environment, service))
    return None if raw is None else ManualLock.model_validate_json(raw)


def _let_go(store: Store, held: ManualLock) -> None:
    # The queue first: a crash in between leaves a note that the next unlock or expiry
    # clears, never a queue that holds releases back with nothing to say why.
    store.release_locks(holder_of(held.environment, held.service))
    store.delete_note(_NOTE + lock_key(held.environment, held.service))


def _remember(store: Store, action: str, held: ManualLock, actor: str, now: datetime) -> None:
    entry = {
        "at": now.isoformat(),
        "action": action,
        "lock": lock_key(held.environment, held.service),
        "by": actor,
        "owner": held.owner,
        "reason": held.reason,
    }
    key = f"{_HISTORY}{now.isoformat()}/{lock_key(held.environment, held.service)}"
    store.set_note(key, json.dumps(entry))
