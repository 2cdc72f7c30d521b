"""Where Drover keeps what must survive a crash: sagas, the outbox, timelines, host versions.

One small interface, two real implementations: :mod:`orchestrator.store.redis` (shared by
many processes and machines) and :mod:`orchestrator.store.sqlite` (a file, the
single-machine default). Atomicity is the store's job, never the caller's: a saga step is
one :meth:`Store.commit` that checks the revision, writes the new state, the outgoing
messages and the timeline, and records the message as processed, all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from orchestrator.contract import Envelope
from orchestrator.saga import ReleaseState

__all__ = [
    "CommitResult",
    "DeadLetter",
    "Store",
    "StoreUnavailable",
    "StoredRelease",
    "open_store",
]


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error; the operation did nothing."""


@dataclass(frozen=True)
class StoredRelease:
    state: ReleaseState
    revision: int  # bumped by every commit that changes the state; 0 means "not stored yet"


class CommitResult(StrEnum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"  # this message was processed for this release before
    CONFLICT = "conflict"  # someone else changed the release since it was loaded


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be used, kept so that on-call can see and act on it."""

    id: str
    at: datetime
    reason: str
    raw: bytes
    source: str  # the queue it came from


class Store(Protocol):
    # --- the saga ---------------------------------------------------------------------
    def load(self, release_id: str) -> StoredRelease | None: ...

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
        """Apply one saga step atomically.

        Refused as DUPLICATE if ``message_id`` was already committed for this release,
        and as CONFLICT if ``state`` is given and the stored revision is not
        ``expected_revision``. ``state=None`` leaves the state alone (a step report that
        only adds to the timeline) and skips the revision check.
        """
        ...

    def pending_outbox(self, limit: int = 500) -> list[Envelope]:
        """Messages committed but not yet marked published, oldest first."""
        ...

    def mark_published(self, message_ids: Sequence[str]) -> None: ...

    def timeline(self, release_id: str) -> list[Envelope]:
        """Every message of a release in the order the coordinator committed them."""
        ...

    def releases(self, limit: int = 50) -> list[ReleaseState]:
        """The most recently created releases, newest first."""
        ...

    # --- the fleet's record -------------------------------------------------------------
    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        """The version recorded per host; hosts never deployed by Drover are absent."""
        ...

    def record_host_version(
        self, environment: str, service: str, host: str, version: str
    ) -> None: ...

    def count_effect(
        self, release_id: str, environment: str, service: str, host: str, step: str
    ) -> int:
        """Add one to the count of an effect on a host, and return the new count."""
        ...

    def effects(self, release_id: str) -> dict[tuple[str, str, str, str], int]:
        """``(environment, service, host, step) -> count`` for every effect of a release."""
        ...

    # --- messages nobody could use --------------------------------------------------------
    def add_dead_letter(self, letter: DeadLetter) -> None: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def close(self) -> None: ...


def open_store(url: str, namespace: str = "drover") -> Store:
    """Open the store a URL names: ``redis://host:port/db`` or ``sqlite:///path/to/file``."""
    if url.startswith(("redis://", "rediss://")):
        from orchestrator.store.redis import RedisStore

        return RedisStore(url, namespace=namespace)
    if url.startswith("sqlite:///"):
        from orchestrator.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"store URL {url!r}: expected redis://… or sqlite:///path")
