"""Where Drover keeps what must survive a crash: sagas, the outbox, timelines, host versions.

One small interface, two real implementations: :mod:`orchestrator.store.redis` (shared by
many processes and machines) and :mod:`orchestrator.store.sqlite` (a file, the
single-machine default). Atomicity is the store's job, never the caller's: a saga step is
one :meth:`Store.commit` that checks the revision, writes the new state, the outgoing
messages and the timeline, and records the message as processed, all or nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Final, Generic, Protocol, TypeVar

from orchestrator.contract import Envelope
from orchestrator.saga import ComponentState, ComponentStatus, ReleaseState

__all__ = [
    "KEEP_WAKE",
    "PEAK_DRAINED",
    "Answered",
    "Claim",
    "CommitResult",
    "DeadLetter",
    "Effect",
    "Finished",
    "Held",
    "KeepWake",
    "NotHeld",
    "Pending",
    "Queued",
    "Routed",
    "StepDone",
    "Store",
    "StoreUnavailable",
    "StoredRelease",
    "Word",
    "awaited_word",
    "open_store",
    "word_key",
]


class KeepWake(Enum):
    """The type of :data:`KEEP_WAKE`: leave a release's wake-up time as it is."""

    KEEP = "keep"


KEEP_WAKE: Final = KeepWake.KEEP


PEAK_DRAINED: Final = "peak_drained"  # the service state kept by set_drained


@dataclass(frozen=True)
class Held:
    """A lease, and the worker holding it."""

    lease: str
    owner: str


@dataclass(frozen=True)
class Effect:
    """A change to the fleet, counted for a release when, and only when, it changed it.

    Counted in the same step as the change, so no crash leaves a change uncounted: the
    drills prove that nothing was done twice by these counts. A change made ``under`` a
    lease is made only if its maker still holds it as the store makes it: one that
    reaches the store late (queued by a worker that froze) does not undo the work of the
    worker that took over.
    """

    release_id: str
    host: str  # a host, or what stands for a change to the whole service ("*", "flag:x")
    step: str
    under: Held | None = None


@dataclass(frozen=True)
class Claim:
    """What a worker learns when it claims a command's work (:meth:`Store.claim_work`)."""

    outcome: Envelope | None  # the work was finished before: this is how; nothing taken
    taken: bool  # the lease is the caller's now
    holder: str | None  # who holds the lease instead (None if taken, or finished)
    attempts: int  # how often the work was taken, this time included (0 if not taken)
    # Those of the journals asked about that have entries (when taken): one that has
    # none need not be read, since only the lease's holder writes to it.
    journaled: frozenset[str] = frozenset()
    # The release asked about (its one component asked for), as stored when the lease was
    # taken; None if not asked, not taken, or not in the store.
    release: StoredRelease | None = None
    # The outcome kept under the key asked for (:meth:`Store.record_outcome`), as it was
    # when the lease was taken; None if not asked, not taken, or none kept.
    kept: Envelope | None = None


@dataclass(frozen=True)
class StepDone:
    """A step done on a host for a command: an entry of the command's journal."""

    command_id: str
    host: str
    step: str


@dataclass(frozen=True)
class Word:
    """A worker's word on a command: its reports for the release's timeline, the time it
    was said (kept under ``key``, :func:`word_key`), and the steps done since its last."""

    release_id: str
    key: str
    at: datetime
    reports: Sequence[Envelope] = ()
    done: Sequence[StepDone] = ()
    # An outcome to keep under a key (:meth:`Store.record_outcome`) with the word, unless
    # one is kept there already: then nothing of the word is recorded.
    keep: tuple[str, Envelope] | None = None


_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class Pending(Protocol[_T_co]):
    """A write its caller did not wait for (a word recorded ahead, a change to the
    simulated fleet). It is on record no later than its thread's next call on the same
    store (a write it waits for, a read) or :meth:`wait` (on SQLite, also the next write
    any thread waits for); a thread's writes are recorded in the order it made them; and
    one that fails is raised to the thread by then, the call raising it recording
    nothing. Those the thread made ahead after a failed one are not recorded on SQLite;
    on Redis, which has them before it answers the first, only what they check
    themselves refuses them (the worker's, its lease)."""

    def done(self) -> bool:
        """Whether its commit is over: :meth:`wait` then answers at once."""
        ...

    def wait(self) -> _T_co:
        """Its answer once it is on record; raise what recording it raised."""
        ...


class Answered(Generic[_T]):
    """A write a store made before it answered: a store whose writes go out over
    several connections at once has no order to keep them in, so it waits for each."""

    __slots__ = ("_answer",)

    def __init__(self, answer: _T) -> None:
        self._answer = answer

    def done(self) -> bool:
        return True

    def wait(self) -> _T:
        return self._answer


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error; the operation did nothing."""


class NotHeld(Exception):
    """A change refused, and nothing changed: the lease it was made under (its effect's
    ``under``) is no longer its maker's."""


@dataclass(frozen=True)
class StoredRelease:
    state: ReleaseState
    revision: int  # bumped by every commit that changes the state; 0 means "not stored yet"


@dataclass(frozen=True)
class Queued:
    """A message as the broker keeps it in a queue: ``raw`` in the Redis list ``list_key``,
    as kombu's Redis transport would have pushed it there."""

    list_key: str
    raw: str


@dataclass(frozen=True)
class Routed:
    """A message as the broker keeps it where an exchange routes it: ``raw`` in each Redis
    list of ``list_keys``, as kombu's Redis transport would have pushed it there, while
    the exchange's bindings (the set ``bindings_key``) are exactly ``bindings``, those it
    was routed by."""

    bindings_key: str
    bindings: tuple[bytes, ...]
    list_keys: tuple[str, ...]
    raw: str


@dataclass(frozen=True)
class Finished:
    """How a store finished a command's work (:meth:`Store.finish_work`)."""

    kept: Envelope  # the outcome kept: the one offered, unless a copy's was first
    routed: bool  # pushed where it was routed, in the same step: it needs no publish


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
    def load(
        self, release_id: str, components: Collection[str] | None = None
    ) -> StoredRelease | None:
        """The release as stored. With ``components``, only those of its components that
        it has: how a worker reads the one it carries out without parsing a thousand
        others. Such a partial release is for reading, never for a commit."""
        ...

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
        """Apply one saga step atomically.

        Refused as DUPLICATE if ``message_id`` was already committed for this release,
        and as CONFLICT if ``expected_revision`` is given and the stored revision is not
        that (0: the release is not stored yet). A decision taken on a state checks its
        revision even when it changed nothing: on a newer state it might have. A note
        that decides nothing passes None. ``state=None`` leaves the state alone; a state
        bumps the revision. Outbox ids are marked seen under their own envelope's release.

        ``changed_components`` names the components of ``state`` that differ from the
        stored ones; only those are written (None writes them all). The release's own
        fields are always written with a state.

        ``wake_at`` sets when the release next needs the coordinator's attention even
        if no message comes (a deadline): a time sets it, ``None`` clears it, and
        ``KEEP_WAKE`` (the default) leaves it as it is. It is written in the same atomic
        step as the state.

        ``queued`` (by message id) hands messages of the outbox straight to the broker in
        the same step, pushed onto their queues instead of kept in the outbox for the
        relay: only a store that :meth:`shares_redis_with` the broker can, and may be
        given any.
        """
        ...

    def shares_redis_with(self, broker_url: str) -> bool:
        """Whether this store is the Redis database the broker at ``broker_url`` keeps its
        queues in: a commit may then push messages onto them (``queued``), and a command's
        finish its outcome (``routed``)."""
        ...

    def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Releases whose ``wake_at`` is at or before ``now``, earliest first."""
        ...

    def pending_outbox(self, limit: int = 500) -> list[Envelope]:
        """Messages committed but not yet marked published, oldest first."""
        ...

    def mark_published(self, message_ids: Sequence[str]) -> None: ...

    def timeline(self, release_id: str, start: int = 0) -> list[Envelope]:
        """Every message of a release in the order it was recorded (the coordinator's
        commits and the workers' reports), from the ``start``-th on (a follower reads
        only what it has not seen)."""
        ...

    def record_reports(self, word: Word, under: Held | None = None) -> Envelope | None:
        """A worker's word: its reports added to the release's timeline, its time kept as
        the last word under its key, its steps done journaled (as
        :meth:`record_progress`) and the outcome it keeps kept, in one atomic step.

        None, or the outcome kept before under the word's ``keep`` key when it is not the
        one offered: then nothing was recorded. Made ``under`` a lease its maker no
        longer holds, it records nothing and raises NotHeld: a worker whose lease lapsed
        while another took its work over keeps nothing for it (what the hosts ran, the
        first holder's record, stays the one the next holder read with its lease).
        """
        ...

    def record_reports_ahead(self, word: Word, under: Held | None = None) -> Pending[None]:
        """:meth:`record_reports`, without waiting for it (see :class:`Pending`). Made
        ``under`` a lease, it is refused (NotHeld, recording nothing) after a change the
        thread made under it that the store refused; a store that may run it before it
        has answered that change (Redis) checks the lease for it as for a change. A word
        whose ``keep`` finds another's kept first is refused too (NotHeld, recording
        nothing: under the lease, only a holder before its maker can have kept one).

        What a worker says about the simulated fleet, whose changes are writes to this
        store, can go with those writes instead of before each; its commit need not wait
        for the disk, which it reaches with the next commit that does, unless it keeps
        something (Drover's own record): then it waits for the disk as it is committed,
        no later than the fleet's changes the thread made after it.
        """
        ...

    def forget_ahead(self) -> None:
        """Wait for what this thread wrote ahead, and forget how it went: the command it
        was for is over (ended, or given up for a lease lost), and a failure among its
        writes is not for the thread's next command to meet."""
        ...

    def last_words(self, release_id: str, words: Collection[str]) -> dict[str, datetime]:
        """When each of ``words`` was last reported under; those never reported are absent."""
        ...

    def releases(self, limit: int = 50) -> list[ReleaseState]:
        """The most recently created releases, newest first."""
        ...

    # --- the fleet's record -------------------------------------------------------------
    # Its changes are the simulator's, which waits for one only when it needs its answer
    # or takes time over each; a read of this store sees them at once (see Pending). One
    # whose effect is made under a lease no longer its maker's changes nothing, counts
    # nothing, and answers NotHeld.
    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        """The version recorded per host; hosts never deployed by Drover are absent."""
        ...

    def set_host_version(
        self, environment: str, service: str, host: str, version: str, effect: Effect | None
    ) -> Pending[bool]:
        """Record what a host runs; True (and ``effect`` counted) if that changed it."""
        ...

    def effects(self, release_id: str) -> dict[tuple[str, str, str, str], int]:
        """``(environment, service, host, step) -> count`` for every effect of a release."""
        ...

    def drained_hosts(self, environment: str, service: str) -> set[str]:
        """Hosts the simulator has out of service."""
        ...

    def set_drained(
        self, environment: str, service: str, host: str, drained: bool, effect: Effect | None
    ) -> Pending[bool]:
        """Put a host out of (or back into) service; True (and ``effect`` counted) if that
        changed it. The most hosts ever out at once is kept as :data:`PEAK_DRAINED`."""
        ...

    def service_state(self, environment: str, service: str) -> dict[str, str]:
        """The simulator's other facts about a service (live colour, flags, ...)."""
        ...

    def set_service_state(
        self, environment: str, service: str, field: str, value: str, effect: Effect | None
    ) -> Pending[bool]:
        """Record one fact about a service; True (and ``effect`` counted) if that changed it."""
        ...

    # --- workers: one owner per component, and what each command did ----------------------
    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lease if it is free, expired, or already ``owner``'s (then renew it)."""
        ...

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s lease; False if it has expired or someone else holds it."""
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it; otherwise do nothing."""
        ...

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease now (None if it is free or has expired)."""
        ...

    def record_progress(self, command_id: str, host: str, step: str) -> None:
        """Note that a step of a command is done on a host."""
        ...

    def progress(self, command_id: str) -> dict[str, list[str]]:
        """``host -> steps done`` for a command, in the order they were recorded."""
        ...

    def record_outcome(self, command_id: str, outcome: Envelope) -> Envelope:
        """Keep the event that ended a command, so a redelivered copy can replay it; the
        first one recorded is kept, and returned (this one, or the one kept before)."""
        ...

    def outcome(self, command_id: str) -> Envelope | None: ...

    def count_attempt(self, message_id: str) -> int:
        """Add one to how often a worker has started a command, and return the new count."""
        ...

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
        """In one step: the outcome of ``work`` if it has one (nothing else is done);
        otherwise the lease for ``owner`` if it is free, expired or already theirs, one
        more attempt counted under ``work``, which of ``journals`` (command ids, as in
        :meth:`progress`) have entries, for ``component`` (release id, component name) the
        release as :meth:`load` reads it with that component alone, and the outcome kept
        under ``kept`` (as :meth:`outcome` reads it); otherwise who holds the lease.

        One step, so that work finished by the holder between the question and the lease
        is never begun again.
        """
        ...

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
        """Record the outcome of ``work`` as :meth:`record_outcome` does (the first one is
        kept, and returned) and, in the same step, the worker's ``last`` word (as
        :meth:`record_reports`) and give the lease up if ``owner`` holds it.

        A store that shares the broker's Redis (:meth:`shares_redis_with`) also pushes
        the outcome where the broker keeps it once published (``routed``, as the bus
        routed it: :meth:`Bus.routed`), in the same step, if the outcome kept is the one
        offered and the exchange's bindings are still those it was routed by; the
        answer says whether it did. Any other store never does: the caller publishes
        what was kept.

        If another owner holds the lease, nothing is recorded and NotHeld is raised: a
        worker whose lease lapsed while another took the work over leaves its outcome to
        that one. A lease that lapsed with nobody taking it over is no one's, and the
        outcome of the work done under it is kept."""
        ...

    # --- locks: one release at a time per (environment, service) ---------------------------
    def acquire_locks(self, release_id: str, keys: Sequence[str]) -> bool:
        """Queue the release behind each key (once; safe to repeat) and report whether it
        is now first in every one of those queues, i.e. holds all its locks.

        Queues are first come, first served and a release joins all of its queues in
        one atomic step, so two releases can never each wait for the other.
        """
        ...

    def release_locks(self, release_id: str) -> list[str]:
        """Leave every queue the release is in; return the releases that, as a result,
        are now first in all of their queues (in the order they were queued)."""
        ...

    def lock_queue(self, key: str) -> list[str]:
        """The releases queued for a key, the holder first."""
        ...

    def locks_of(self, release_id: str) -> list[str]:
        """The keys a release queued for (empty once it released them)."""
        ...

    # --- notes: small records of their own (manual locks and their history) ---------------
    def set_note(self, key: str, value: str) -> None: ...

    def note(self, key: str) -> str | None: ...

    def delete_note(self, key: str) -> bool:
        """Forget a note; True if there was one."""
        ...

    def notes(self, prefix: str) -> dict[str, str]:
        """Every note whose key starts with ``prefix``."""
        ...

    # --- messages nobody could use --------------------------------------------------------
    def add_dead_letter(self, letter: DeadLetter) -> None: ...

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Oldest first."""
        ...

    def dead_letter(self, letter_id: str) -> DeadLetter | None: ...

    def remove_dead_letter(self, letter_id: str) -> bool:
        """Forget a dead letter; False if there was none with that id."""
        ...

    def durability_problems(self) -> list[str]:
        """Why this store might lose what it was given (settings of the server), if any."""
        ...

    def close(self) -> None: ...


def word_key(component: str, *, rollback: bool, attempt: int) -> str:
    """Where a worker's last word on a command is kept: per component, direction and
    attempt, so that a late report of a deploy that timed out never counts for its
    rollback, nor one of a release's first run for its retry."""
    return f"{component}/{'back' if rollback else 'forward'}/{attempt}"


def awaited_word(component: ComponentState) -> str:
    """The :func:`word_key` of the command the saga waits for on ``component``."""
    rolling_back = component.status is ComponentStatus.ROLLING_BACK
    return word_key(component.name, rollback=rolling_back, attempt=component.attempt)


def open_store(url: str, namespace: str = "drover") -> Store:
    """Open the store a URL names: ``redis://host:port/db`` or ``sqlite:///path/to/file``."""
    if url.startswith(("redis://", "rediss://")):
        from orchestrator.store.redis import RedisStore

        return RedisStore(url, namespace=namespace)
    if url.startswith("sqlite:///"):
        from orchestrator.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"store URL {url!r}: expected redis://… or sqlite:///path")
