"""The store in one SQLite file: the single-machine default.

Every write runs inside ``BEGIN IMMEDIATE``, which takes the file's write lock before the
first read, so a saga step's duplicate and revision checks and its writes have no other
writer in between, be it another thread here or another process on the same file. WAL
journal mode lets readers go on while one process writes.

Writes of several threads are committed together (:meth:`SqliteStore._write`): a commit
waits for the disk (``synchronous = FULL``), and that wait, not the statements, is most
of what a write costs, so whichever thread commits takes every write waiting with its
own into the same transaction, each in a savepoint of its own. No caller that waits
returns before the commit that holds its write is done (on disk, for Drover's own
writes: below), and a write that fails is undone alone.

Writes are committed in the order they were queued. The simulated fleet's changes and
words recorded ahead (:class:`~orchestrator.store.Pending`) are queued without waiting:
they are committed with the next write anyone waits for, or before the next read, so a
read here sees them at once. A thread's writes after one of its own that failed are not
committed (:class:`_Caller`): a host's journal entry never outlives its change.

A commit waits for the disk unless it holds only writes that need not: the simulated
fleet's changes (they stand for hosts, which keep their own state, not the store's) and
words recorded ahead (on disk with the next write of Drover's own). Such a commit is in
the WAL file, which a crash of the process does not lose; a power cut can, and then
with every commit after it (SQLite recovers the WAL up to its first damaged frame), so
what is on disk is always what was committed up to some point, in order. What is queued
and not yet committed is lost with the process, and with it every write queued after it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Final, Generic, TypeVar

from orchestrator.contract import Envelope, decode
from orchestrator.saga import ReleaseState
from orchestrator.store import (
    KEEP_WAKE,
    PEAK_DRAINED,
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
    StepDone,
    StoredRelease,
    StoreUnavailable,
    Word,
    shared,
)

__all__ = ["SqliteStore"]

# How long a write waits for another process's write lock before it gives up and the
# store reports itself unavailable. Read when a store is opened.
_BUSY_TIMEOUT_S: Final = 30.0

# How long to wait between tries to switch a file that another process is opening to WAL.
_WAL_RETRY_S: Final = 0.01

_T = TypeVar("_T")

_SCHEMA: Final = (
    # one row per release: its own fields (without its components) and the revision its
    # commits compare and set
    """CREATE TABLE IF NOT EXISTS releases (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at REAL NOT NULL  -- epoch seconds: the same sort key as Redis's index
    )""",
    "CREATE INDEX IF NOT EXISTS releases_newest ON releases (created_at DESC, id DESC)",
    # one row per component of a release, written only when it changes
    """CREATE TABLE IF NOT EXISTS components (
        release_id TEXT NOT NULL,
        name TEXT NOT NULL,
        place INTEGER NOT NULL,  -- its place in the release's order
        state TEXT NOT NULL,
        PRIMARY KEY (release_id, name)
    ) WITHOUT ROWID""",
    # ids of messages committed for a release, and of the messages it sent
    """CREATE TABLE IF NOT EXISTS seen (
        release_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (release_id, message_id)
    ) WITHOUT ROWID""",
    # committed, not yet published messages; AUTOINCREMENT so a sequence number is never
    # reused after its row is published, and names one message forever (in logs, say).
    # An id committed again replaces its row at the end, as ZADD does in Redis.
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        body BLOB NOT NULL
    )""",
    # every message of every release; rows are never deleted, so the rowid is the order
    """CREATE TABLE IF NOT EXISTS timeline (
        seq INTEGER PRIMARY KEY,
        release_id TEXT NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS timeline_by_release ON timeline (release_id, seq)",
    # when a worker last reported on a command (see store.word_key)
    """CREATE TABLE IF NOT EXISTS last_words (
        release_id TEXT NOT NULL,
        word TEXT NOT NULL,
        at REAL NOT NULL,  -- epoch seconds
        PRIMARY KEY (release_id, word)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS host_versions (
        environment TEXT NOT NULL,
        service TEXT NOT NULL,
        host TEXT NOT NULL,
        version TEXT NOT NULL,
        PRIMARY KEY (environment, service, host)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS effects (
        release_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        service TEXT NOT NULL,
        host TEXT NOT NULL,
        step TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (release_id, environment, service, host, step)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        at TEXT NOT NULL,  -- ISO 8601, with the offset it was given
        reason TEXT NOT NULL,
        raw BLOB NOT NULL,
        source TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_id ON dead_letters (id)",
    # when a release next needs the coordinator; a release without a wake-up has no row
    """CREATE TABLE IF NOT EXISTS wakes (
        release_id TEXT PRIMARY KEY,
        at REAL NOT NULL  -- epoch seconds, as in Redis's wake index
    )""",
    "CREATE INDEX IF NOT EXISTS wakes_earliest ON wakes (at, release_id)",
    """CREATE TABLE IF NOT EXISTS notes (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS service_state (
        environment TEXT NOT NULL,
        service TEXT NOT NULL,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (environment, service, field)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS drained (
        environment TEXT NOT NULL,
        service TEXT NOT NULL,
        host TEXT NOT NULL,
        PRIMARY KEY (environment, service, host)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL  -- epoch seconds on this machine's clock
    )""",
    # steps done per command and host; the rowid is the order they were recorded in
    """CREATE TABLE IF NOT EXISTS progress (
        seq INTEGER PRIMARY KEY,
        command_id TEXT NOT NULL,
        host TEXT NOT NULL,
        step TEXT NOT NULL,
        UNIQUE (command_id, host, step)
    )""",
    """CREATE TABLE IF NOT EXISTS outcomes (
        command_id TEXT PRIMARY KEY,
        body BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS attempts (
        message_id TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        expires_at REAL NOT NULL  -- forgotten then, as Redis expires its counter
    )""",
    "CREATE INDEX IF NOT EXISTS attempts_expiring ON attempts (expires_at)",
    # one row per release in each lock's queue; the lowest seq in a queue holds the lock.
    # A release takes one seq per call that queues it, one higher than any in use.
    """CREATE TABLE IF NOT EXISTS lock_queue (
        key TEXT NOT NULL,
        release_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (key, release_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS lock_queue_order ON lock_queue (key, seq)",
    "CREATE INDEX IF NOT EXISTS lock_queue_by_release ON lock_queue (release_id, seq)",
)


@contextmanager
def _translated() -> Iterator[None]:
    """Turn SQLite's operational errors into Drover's own at this edge.

    ``OperationalError`` is what SQLite raises when the file is locked past the busy
    timeout, cannot be opened, is on a full or failing disk: the store is unavailable.
    Programming errors (``ProgrammingError``, ``IntegrityError``) are bugs and stay as
    they are.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: sqlite3.OperationalError) -> StoreUnavailable:
    return StoreUnavailable(f"sqlite: {exc}")


class SqliteStore:
    def __init__(self, path: str) -> None:
        # One connection behind a lock rather than one per thread: SQLite lets one
        # writer in at a time anyway, and the coordinator writes saga steps, not a stream,
        # so per-thread connections would buy little and cost much: connections left
        # open by threads that ended, and a close() that cannot reach them.
        self._lock = threading.Lock()
        self._db = _open(path)
        self._durable = True  # whether the connection's commits wait for the disk now
        self._waiting: deque[_Write[object]] = deque()  # writes for the next commit
        self._caller = _Caller()
        self._attempt_ttl_s = shared.ATTEMPT_COUNT_TTL_S

    # --- the saga ---------------------------------------------------------------------

    def load(
        self, release_id: str, components: Collection[str] | None = None
    ) -> StoredRelease | None:
        with self._read() as db:
            return _load(db, release_id, components)

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
        if queued:
            raise ValueError("a SQLite store cannot push messages onto a broker's queues")

        def commit(db: sqlite3.Connection) -> CommitResult:
            if _is_seen(db, release_id, message_id):
                return CommitResult.DUPLICATE
            revision = _revision(db, release_id)
            if expected_revision is not None and revision != expected_revision:
                return CommitResult.CONFLICT
            if state is not None:
                record = shared.release_record(state, changed_components)
                _save_state(db, release_id, record, state.created_at, revision + 1)
            _append(db, release_id, message_id, outbox, timeline)
            _set_wake(db, release_id, wake_at)
            return CommitResult.COMMITTED

        return self._write(commit)

    def shares_redis_with(self, broker_url: str) -> bool:
        return False

    def due(self, now: datetime, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        with self._read() as db:
            rows = db.execute(
                "SELECT release_id FROM wakes WHERE at <= ? ORDER BY at, release_id LIMIT ?",
                (shared.epoch_s(now), limit),
            ).fetchall()
        return [release_id for (release_id,) in rows]

    def pending_outbox(self, limit: int = 500) -> list[Envelope]:
        if limit <= 0:
            return []
        with self._read() as db:
            rows = db.execute("SELECT body FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [decode(body) for (body,) in rows]

    def mark_published(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        rows = [(i,) for i in message_ids]
        self._write(lambda db: db.executemany("DELETE FROM outbox WHERE id = ?", rows))

    def timeline(self, release_id: str, start: int = 0) -> list[Envelope]:
        with self._read() as db:
            rows = db.execute(
                "SELECT body FROM timeline WHERE release_id = ? ORDER BY seq LIMIT -1 OFFSET ?",
                (release_id, max(start, 0)),
            ).fetchall()
        return [decode(body) for (body,) in rows]

    def record_reports(self, word: Word, under: Held | None = None) -> Envelope | None:
        return self._write(lambda db: _record_word_under(db, word, under))

    def record_reports_ahead(self, word: Word, under: Held | None = None) -> Pending[None]:
        if word.keep is None:
            # ``under`` needs no look here: a write queued after one that a lost lease
            # refused is refused with it (see _submit), and a word is not a change.
            return self._ahead(lambda db: _record_word(db, word))

        def keep(db: sqlite3.Connection) -> None:
            shared.recorded_ahead(word, _record_word_under(db, word, under))

        # Drover's own record of what the hosts ran: its commit waits for the disk, and
        # the fleet's changes after it are in that commit or a later one.
        return self._ahead(keep, durable=True)

    def forget_ahead(self) -> None:
        latest = self._caller.latest
        if latest is not None:
            self._caller.latest = None
            with suppress(Exception):  # the failure belongs to a command that is over
                self._finish(latest)

    def last_words(self, release_id: str, words: Collection[str]) -> dict[str, datetime]:
        wanted = set(words)
        with self._read() as db:
            rows = db.execute(
                "SELECT word, at FROM last_words WHERE release_id = ?", (release_id,)
            ).fetchall()
        return {word: shared.from_epoch_s(at) for word, at in rows if word in wanted}

    def releases(self, limit: int = 50) -> list[ReleaseState]:
        if limit <= 0:
            return []
        with self._read() as db:
            rows = db.execute(
                "SELECT id, state FROM releases ORDER BY created_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [shared.state_from_record(fields, _components(db, id_)) for id_, fields in rows]

    # --- the fleet's record -------------------------------------------------------------

    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT host, version FROM host_versions WHERE environment = ? AND service = ?",
                (environment, service),
            ).fetchall()
        return dict(rows)

    def set_host_version(
        self, environment: str, service: str, host: str, version: str, effect: Effect | None
    ) -> Pending[bool]:
        def set_version(db: sqlite3.Connection) -> bool:
            _still_held(db, effect.under if effect else None)
            changed = db.execute(
                "INSERT INTO host_versions (environment, service, host, version)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (environment, service, host)"
                " DO UPDATE SET version = excluded.version WHERE version != excluded.version",
                (environment, service, host, version),
            ).rowcount
            return _counted(db, changed > 0, environment, service, effect)

        return self._ahead(set_version)

    def effects(self, release_id: str) -> dict[tuple[str, str, str, str], int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT environment, service, host, step, count FROM effects WHERE release_id = ?",
                (release_id,),
            ).fetchall()
        return {(env, service, host, step): count for env, service, host, step, count in rows}

    def drained_hosts(self, environment: str, service: str) -> set[str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT host FROM drained WHERE environment = ? AND service = ?",
                (environment, service),
            ).fetchall()
        return {host for (host,) in rows}

    def set_drained(
        self, environment: str, service: str, host: str, drained: bool, effect: Effect | None
    ) -> Pending[bool]:
        statement = (
            "INSERT OR IGNORE INTO drained (environment, service, host) VALUES (?, ?, ?)"
            if drained
            else "DELETE FROM drained WHERE environment = ? AND service = ? AND host = ?"
        )

        def set_drained(db: sqlite3.Connection) -> bool:
            _still_held(db, effect.under if effect else None)
            changed = db.execute(statement, (environment, service, host)).rowcount > 0
            if changed and drained:
                db.execute(
                    "INSERT INTO service_state (environment, service, field, value)"
                    " SELECT ?, ?, ?, COUNT(*) FROM drained WHERE environment = ? AND service = ?"
                    " ON CONFLICT (environment, service, field)"
                    " DO UPDATE SET value = excluded.value"
                    " WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                    (environment, service, PEAK_DRAINED, environment, service),
                )
            return _counted(db, changed, environment, service, effect)

        return self._ahead(set_drained)

    def service_state(self, environment: str, service: str) -> dict[str, str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT field, value FROM service_state WHERE environment = ? AND service = ?",
                (environment, service),
            ).fetchall()
        return dict(rows)

    def set_service_state(
        self, environment: str, service: str, field: str, value: str, effect: Effect | None
    ) -> Pending[bool]:
        def set_state(db: sqlite3.Connection) -> bool:
            _still_held(db, effect.under if effect else None)
            changed = db.execute(
                "INSERT INTO service_state (environment, service, field, value)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (environment, service, field)"
                " DO UPDATE SET value = excluded.value WHERE value != excluded.value",
                (environment, service, field, value),
            ).rowcount
            return _counted(db, changed > 0, environment, service, effect)

        return self._ahead(set_state)

    # --- notes ---------------------------------------------------------------------------

    def set_note(self, key: str, value: str) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT INTO notes (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    def note(self, key: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM notes WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def delete_note(self, key: str) -> bool:
        return self._write(
            lambda db: db.execute("DELETE FROM notes WHERE key = ?", (key,)).rowcount > 0
        )

    def notes(self, prefix: str) -> dict[str, str]:
        # A range on the primary key, not LIKE: the prefix may hold % or _.
        with self._read() as db:
            rows = db.execute(
                "SELECT key, value FROM notes WHERE key >= ? AND key < ?",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        return dict(rows)

    # --- workers: one owner per component, and what each command did ----------------------

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        ttl_s = shared.lease_ttl_s(ttl_s)
        return self._write(lambda db: _take_lease(db, name, owner, ttl_s))

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        ttl_s = shared.lease_ttl_s(ttl_s)

        def renew(db: sqlite3.Connection) -> bool:
            now = time.time()  # once the write lock is ours: waiting for it takes time
            renewed = db.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?",
                (now + ttl_s, name, owner, now),
            )
            return renewed.rowcount > 0

        return self._write(renew)

    def release_lease(self, name: str, owner: str) -> None:
        self._write(lambda db: _release_lease(db, name, owner))

    def lease_holder(self, name: str) -> str | None:
        with self._read() as db:
            return _lease_holder(db, name)

    def record_progress(self, command_id: str, host: str, step: str) -> None:
        self._write(lambda db: _record_done(db, [StepDone(command_id, host, step)]))

    def progress(self, command_id: str) -> dict[str, list[str]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT host, step FROM progress WHERE command_id = ? ORDER BY seq", (command_id,)
            ).fetchall()
        return shared.steps_by_host(rows)

    def record_outcome(self, command_id: str, outcome: Envelope) -> Envelope:
        return self._write(lambda db: _keep_first(db, command_id, outcome))

    def outcome(self, command_id: str) -> Envelope | None:
        with self._read() as db:
            return _outcome(db, command_id)

    def count_attempt(self, message_id: str) -> int:
        return self._write(lambda db: _count_attempt(db, message_id, self._attempt_ttl_s))

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
        ttl_s = shared.lease_ttl_s(ttl_s)

        def claim(db: sqlite3.Connection) -> Claim:
            row = db.execute("SELECT body FROM outcomes WHERE command_id = ?", (work,)).fetchone()
            if row is not None:
                return Claim(outcome=decode(row[0]), taken=False, holder=None, attempts=0)
            if not _take_lease(db, lease, owner, ttl_s):
                return Claim(outcome=None, taken=False, holder=_lease_holder(db, lease), attempts=0)
            attempts = _count_attempt(db, work, self._attempt_ttl_s)
            journaled = frozenset(j for j in journals if _has_entries(db, j))
            release = _load(db, component[0], [component[1]]) if component else None
            return Claim(
                outcome=None,
                taken=True,
                holder=None,
                attempts=attempts,
                journaled=journaled,
                release=release,
                kept=None if kept is None else _outcome(db, kept),
            )

        return self._write(claim)

    def finish_work(
        self,
        work: str,
        outcome: Envelope,
        lease: str,
        owner: str,
        last: Word | None = None,
        *,
        routed: Routed | None = None,  # never here: this store is no broker's Redis
    ) -> Finished:
        def finish(db: sqlite3.Connection) -> Finished:
            if _lease_holder(db, lease) not in (None, owner):
                raise NotHeld(f"{owner} no longer holds {lease}: another took the work over")
            if last is not None:
                _record_word(db, last)
            kept = _keep_first(db, work, outcome)
            _release_lease(db, lease, owner)
            return Finished(kept, routed=False)

        return self._write(finish)

    # --- locks: one release at a time per (environment, service) ---------------------------

    def acquire_locks(self, release_id: str, keys: Sequence[str]) -> bool:
        # one write transaction: the release joins all its queues with nobody in between
        def acquire(db: sqlite3.Connection) -> bool:
            _queue(db, release_id, keys)
            return _holds_all(db, release_id)

        return self._write(acquire)

    def release_locks(self, release_id: str) -> list[str]:
        def release(db: sqlite3.Connection) -> list[str]:
            freed = _headed_by(db, release_id)
            db.execute("DELETE FROM lock_queue WHERE release_id = ?", (release_id,))
            successors = dict.fromkeys(_head(db, key) for key in freed)
            starting = [r for r in successors if r is not None and _holds_all(db, r)]
            return sorted(starting, key=lambda r: _first_queued(db, r))

        return self._write(release)

    def lock_queue(self, key: str) -> list[str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT release_id FROM lock_queue WHERE key = ? ORDER BY seq", (key,)
            ).fetchall()
        return [release_id for (release_id,) in rows]

    def locks_of(self, release_id: str) -> list[str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT key FROM lock_queue WHERE release_id = ? ORDER BY seq, key", (release_id,)
            ).fetchall()
        return [key for (key,) in rows]

    # --- messages nobody could use --------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        # a letter added again keeps its first row and its place, as on Redis
        row = (letter.id, letter.at.isoformat(), letter.reason, letter.raw, letter.source)
        self._write(
            lambda db: db.execute(
                f"INSERT INTO dead_letters ({_DEAD_LETTER_COLUMNS}) SELECT ?, ?, ?, ?, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE id = ?)",
                (*row, letter.id),
            )
        )

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [_dead_letter(row) for row in rows]

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ? ORDER BY seq",
                (letter_id,),
            ).fetchone()
        return None if row is None else _dead_letter(row)

    def remove_dead_letter(self, letter_id: str) -> bool:
        return self._write(
            lambda db: (
                db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,)).rowcount > 0
            )
        )

    def durability_problems(self) -> list[str]:
        return []  # WAL, synchronous=FULL for Drover's own writes: on disk once committed

    def close(self) -> None:
        with self._lock:
            self._commit_waiting()  # what was written ahead is kept
            self._db.close()

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # outside a transaction each SELECT reads one consistent snapshot on its own
        with self._lock, _translated():
            self._commit_waiting()  # what was written ahead is read as written
            yield self._db

    def _write(self, body: Callable[[sqlite3.Connection], _T], *, durable: bool = True) -> _T:
        """``body``'s answer, once what it wrote is committed: with the writes of other
        threads waiting at the same time, if there are any."""
        return self._finish(self._submit(body, durable=durable))

    def _ahead(
        self, body: Callable[[sqlite3.Connection], _T], *, durable: bool = False
    ) -> Pending[_T]:
        """``body`` queued for the next commit anyone makes, which need not wait for the
        disk for it unless ``durable`` (see the module's docstring)."""
        return _Ahead(self, self._submit(body, durable=durable))

    def _submit(
        self, body: Callable[[sqlite3.Connection], _T], *, durable: bool = True
    ) -> _Write[_T]:
        """Queue ``body`` for the next commit. Writes are committed in the order they
        were queued: with, or after, the writes queued before them; and none of a thread's
        after one of its own that failed (see :class:`_Caller`). ``durable``: its commit
        waits for the disk (see the module's docstring for those that need not)."""
        mine = _Write(body, durable, after=self._caller.latest)
        self._waiting.append(mine)  # type: ignore[arg-type]  # the queue holds any answer type
        self._caller.latest = mine  # type: ignore[assignment]
        return mine

    def _finish(self, mine: _Write[_T]) -> _T:
        """``mine``'s answer once it is committed, by this thread if no other took it."""
        if not mine.done:  # else committed already: the connection may be another commit's
            with self._lock:
                if not mine.done:  # no other thread took it into its commit while we waited
                    self._commit_waiting()
        if self._caller.latest is mine or mine.error is not None:
            self._caller.latest = None  # this thread learns now how its writes went
        return mine.answer()

    def _commit_waiting(self) -> None:
        """Commit every write waiting, in the order they were queued; the caller holds
        the connection."""
        group: list[_Write[object]] = []
        while self._waiting:
            group.append(self._waiting.popleft())
        if group:
            self._commit_together(group)

    def _commit_together(self, group: Sequence[_Write[object]]) -> None:
        """Run the writes of ``group`` in one transaction and commit it once, waiting for
        the disk if any of them is to."""
        db = self._db
        try:
            self._wait_for_disk(any(write.durable for write in group))
            _immediately(db)
            for write in group:
                write.run(db)
            db.execute("COMMIT")
        except BaseException as exc:
            for write in group:
                write.lost(exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise  # this thread's own interruption
        finally:
            for write in group:
                write.done = True

    def _wait_for_disk(self, durable: bool) -> None:
        """Whether the next commit waits for the disk; set between transactions, where
        SQLite takes it."""
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable


class _Write(Generic[_T]):
    """One caller's write: what it does, and how it ended once its commit is over."""

    __slots__ = ("after", "body", "done", "durable", "error", "result")

    def __init__(
        self,
        body: Callable[[sqlite3.Connection], _T],
        durable: bool,
        after: _Write[object] | None,
    ) -> None:
        self.body = body
        self.durable = durable
        self.after = after  # the same thread's write before it, until this one has run
        self.done = False
        self.result: _T | None = None
        self.error: BaseException | None = None

    def run(self, db: sqlite3.Connection) -> None:
        before, self.after = self.after, None
        if before is not None and before.error is not None:
            # A refused change refuses what its maker did after it: it has lost its lease.
            passed_on = isinstance(before.error, NotHeld | _NotWritten)
            self.error = before.error if passed_on else _NotWritten(before.error)
            return
        db.execute("SAVEPOINT one_write")
        try:
            self.result = self.body(db)
        except Exception as exc:
            if not db.in_transaction:
                raise  # SQLite gave up the whole transaction (a full or failing disk)
            db.execute("ROLLBACK TO one_write")
            self.error = exc
        db.execute("RELEASE one_write")

    def lost(self, cause: BaseException) -> None:
        """Nothing of the transaction was committed, this write included."""
        if self.error is None:
            # Another thread's interruption (a KeyboardInterrupt in the thread that was
            # committing) is not this caller's to raise: for it, the store failed.
            interrupted = not isinstance(cause, Exception)
            self.error = sqlite3.OperationalError("interrupted") if interrupted else cause

    def answer(self) -> _T:
        """What the write returned, or what it raised (SQLite's errors as Drover's, as
        :func:`_translated` turns them: at every answer, so not by a context manager)."""
        if self.error is None:
            return self.result  # type: ignore[return-value]  # set by run() when no error
        if isinstance(self.error, sqlite3.OperationalError):
            raise _unavailable(self.error) from self.error
        raise self.error


class _NotWritten(StoreUnavailable):
    """A write not made because one its thread made before it failed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"not written: a write made before it failed: {cause}")


class _Ahead(Generic[_T]):
    """A write queued for the next commit, whoever makes it."""

    __slots__ = ("_store", "_write")

    def __init__(self, store: SqliteStore, write: _Write[_T]) -> None:
        self._store = store
        self._write = write

    def done(self) -> bool:
        return self._write.done

    def wait(self) -> _T:
        return self._store._finish(self._write)


class _Caller(threading.local):
    """Per thread, its latest write not known to have succeeded.

    A thread's writes are committed in the order it made them, and one it did not wait
    for may fail while it goes on: its later writes then fail too (say, the journal entry
    of a host whose change failed must not be kept without it), until the thread learns
    of the failure: a write it waits for fails, or it has waited for its latest.
    """

    latest: _Write[object] | None = None


def _record_word_under(db: sqlite3.Connection, word: Word, under: Held | None) -> Envelope | None:
    """``word`` recorded while ``under`` is its maker's (else NotHeld): None, or the
    outcome kept before under its ``keep`` key if not the one offered (nothing recorded)."""
    _still_held(db, under)
    if word.keep is not None:
        key, offered = word.keep
        kept = _keep_first(db, key, offered)
        if kept is not offered:
            return kept
    _record_word(db, word)
    return None


def _record_word(db: sqlite3.Connection, word: Word) -> None:
    db.executemany(
        "INSERT INTO timeline (release_id, body) VALUES (?, ?)",
        [(word.release_id, m.encode()) for m in word.reports],
    )
    db.execute(
        "INSERT OR REPLACE INTO last_words (release_id, word, at) VALUES (?, ?, ?)",
        (word.release_id, word.key, shared.epoch_s(word.at)),
    )
    _record_done(db, word.done)


def _has_entries(db: sqlite3.Connection, command_id: str) -> bool:
    found = db.execute("SELECT 1 FROM progress WHERE command_id = ? LIMIT 1", (command_id,))
    return found.fetchone() is not None


def _record_done(db: sqlite3.Connection, done: Sequence[StepDone]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO progress (command_id, host, step) VALUES (?, ?, ?)",
        [(d.command_id, d.host, d.step) for d in done],
    )


def _take_lease(db: sqlite3.Connection, name: str, owner: str, ttl_s: float) -> bool:
    # one upsert: a new lease, or the row taken over if it is owner's or has expired
    now = time.time()  # once the write lock is ours: waiting for it takes time
    taken = db.execute(
        "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET"
        " owner = excluded.owner, expires_at = excluded.expires_at"
        " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
        (name, owner, now + ttl_s, now),
    )
    return taken.rowcount > 0


def _release_lease(db: sqlite3.Connection, name: str, owner: str) -> None:
    db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))


def _lease_holder(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute(
        "SELECT owner FROM leases WHERE name = ? AND expires_at > ?", (name, time.time())
    ).fetchone()
    return None if row is None else str(row[0])


def _outcome(db: sqlite3.Connection, command_id: str) -> Envelope | None:
    row = db.execute("SELECT body FROM outcomes WHERE command_id = ?", (command_id,)).fetchone()
    return None if row is None else decode(row[0])


def _keep_first(db: sqlite3.Connection, command_id: str, outcome: Envelope) -> Envelope:
    # OR IGNORE: the first outcome recorded is the one kept; a later one is ignored, so
    # every redelivered copy of the command replays the same event
    db.execute(
        "INSERT OR IGNORE INTO outcomes (command_id, body) VALUES (?, ?)",
        (command_id, outcome.encode()),
    )
    (kept,) = db.execute("SELECT body FROM outcomes WHERE command_id = ?", (command_id,)).fetchone()
    return shared.kept_outcome(outcome, kept)


def _count_attempt(db: sqlite3.Connection, message_id: str, ttl_s: float) -> int:
    # as on Redis: a count not touched for the TTL is forgotten, and starts again at 1
    now = time.time()
    db.execute("DELETE FROM attempts WHERE expires_at <= ?", (now,))
    db.execute(
        "INSERT INTO attempts (message_id, count, expires_at) VALUES (?, 1, ?)"
        " ON CONFLICT (message_id) DO UPDATE SET"
        " count = count + 1, expires_at = excluded.expires_at",
        (message_id, now + ttl_s),
    )
    (count,) = db.execute(
        "SELECT count FROM attempts WHERE message_id = ?", (message_id,)
    ).fetchone()
    return int(count)


def _still_held(db: sqlite3.Connection, held: Held | None) -> None:
    """Raise NotHeld if a write is made under a lease its maker no longer holds."""
    if held is not None and _lease_holder(db, held.lease) != held.owner:
        raise NotHeld(f"{held.owner} no longer holds {held.lease}")


def _counted(
    db: sqlite3.Connection, changed: bool, environment: str, service: str, effect: Effect | None
) -> bool:
    """Count ``effect`` if the change in this transaction changed anything."""
    if changed and effect is not None:
        db.execute(
            "INSERT INTO effects (release_id, environment, service, host, step, count)"
            " VALUES (?, ?, ?, ?, ?, 1)"
            " ON CONFLICT (release_id, environment, service, host, step)"
            " DO UPDATE SET count = count + 1",
            (effect.release_id, environment, service, effect.host, effect.step),
        )
    return changed


_DEAD_LETTER_COLUMNS: Final = "id, at, reason, raw, source"


def _dead_letter(row: tuple[str, str, str, bytes, str]) -> DeadLetter:
    letter_id, at, reason, raw, source = row
    return DeadLetter(
        id=letter_id, at=datetime.fromisoformat(at), reason=reason, raw=raw, source=source
    )


def _open(path: str) -> sqlite3.Connection:
    with _translated():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # timeout= is SQLite's busy_timeout. isolation_level=None: the module opens no
        # transactions of its own, so the BEGIN IMMEDIATE here is the only one.
        # check_same_thread=False: SqliteStore's lock, not the thread that opened it,
        # decides who uses the connection.
        db = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    try:
        with _translated():
            _configure(db)
    except BaseException:
        db.close()
        raise
    return db


def _configure(db: sqlite3.Connection) -> None:
    _use_wal(db)
    # FULL, not WAL's usual NORMAL: a committed saga step must survive a power cut too
    db.execute("PRAGMA synchronous = FULL")
    # several processes may open a new file at once; the write lock lets one build it
    _immediately(db)
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL, once, however many processes open it at the same moment.

    SQLite does not call the busy handler for a journal mode change: a process that
    opens a new file while another is switching it fails at once with "database is
    locked". So this waits its turn itself, for as long as the busy timeout would.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(_WAL_RETRY_S)


def _immediately(db: sqlite3.Connection) -> None:
    """Begin a transaction that holds the write lock from its first statement.

    A deferred transaction that reads and then writes can find another writer got in
    between, and fails at once with "database is locked" instead of waiting its turn.
    """
    db.execute("BEGIN IMMEDIATE")


def _is_seen(db: sqlite3.Connection, release_id: str, message_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM seen WHERE release_id = ? AND message_id = ?", (release_id, message_id)
    ).fetchone()
    return row is not None


def _revision(db: sqlite3.Connection, release_id: str) -> int:
    row = db.execute("SELECT revision FROM releases WHERE id = ?", (release_id,)).fetchone()
    return 0 if row is None else int(row[0])


def _save_state(
    db: sqlite3.Connection,
    release_id: str,
    record: shared.ReleaseRecord,
    created_at: datetime,
    revision: int,
) -> None:
    fields, components = record
    db.execute(
        "INSERT INTO releases (id, state, revision, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
        " revision = excluded.revision, created_at = excluded.created_at",
        (release_id, fields, revision, created_at.timestamp()),
    )
    db.executemany(
        "INSERT INTO components (release_id, name, place, state) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (release_id, name) DO UPDATE SET state = excluded.state",
        [(release_id, name, place, component) for name, place, component in components],
    )


def _load(
    db: sqlite3.Connection, release_id: str, components: Collection[str] | None
) -> StoredRelease | None:
    row = db.execute("SELECT state, revision FROM releases WHERE id = ?", (release_id,)).fetchone()
    if row is None:
        return None
    found = _components(db, release_id, components)
    return StoredRelease(shared.state_from_record(row[0], found), row[1])


def _components(
    db: sqlite3.Connection, release_id: str, names: Collection[str] | None = None
) -> list[tuple[int, str]]:
    """(place, JSON) of a release's components: all of them, or those of ``names``."""
    query = "SELECT place, state FROM components WHERE release_id = ?"
    if names is None:
        rows = db.execute(query, (release_id,))
    else:
        chosen = list(names)
        rows = db.execute(
            f"{query} AND name IN ({','.join('?' * len(chosen))})", (release_id, *chosen)
        )
    return [(place, state) for place, state in rows]


def _append(
    db: sqlite3.Connection,
    release_id: str,
    message_id: str,
    outbox: Sequence[Envelope],
    timeline: Sequence[Envelope],
) -> None:
    """Record the message as seen and add the step's outgoing messages and timeline."""
    seen = [(release_id, message_id)]
    # an outbox message is seen by the release it names, where it will come back
    seen += [(message.release_id, message.id) for message in outbox]
    db.executemany("INSERT OR IGNORE INTO seen (release_id, message_id) VALUES (?, ?)", seen)
    db.executemany(
        "INSERT OR REPLACE INTO outbox (id, body) VALUES (?, ?)",
        [(m.id, m.encode()) for m in outbox],
    )
    db.executemany(
        "INSERT INTO timeline (release_id, body) VALUES (?, ?)",
        [(release_id, m.encode()) for m in timeline],
    )


def _set_wake(db: sqlite3.Connection, release_id: str, wake_at: datetime | KeepWake | None) -> None:
    if wake_at is KEEP_WAKE:
        return
    if wake_at is None:
        db.execute("DELETE FROM wakes WHERE release_id = ?", (release_id,))
        return
    db.execute(
        "INSERT INTO wakes (release_id, at) VALUES (?, ?)"
        " ON CONFLICT (release_id) DO UPDATE SET at = excluded.at",
        (release_id, shared.epoch_s(wake_at)),
    )


# --- locks: the lowest seq in a key's queue holds the key -----------------------------------


def _queue(db: sqlite3.Connection, release_id: str, keys: Sequence[str]) -> None:
    """Put the release at the end of each queue of ``keys`` it is not in yet."""
    queued = set(_locks_of(db, release_id))
    joining = [key for key in dict.fromkeys(keys) if key not in queued]
    if not joining:
        return
    (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM lock_queue").fetchone()
    db.executemany(
        "INSERT INTO lock_queue (key, release_id, seq) VALUES (?, ?, ?)",
        [(key, release_id, seq) for key in joining],
    )


def _locks_of(db: sqlite3.Connection, release_id: str) -> list[str]:
    rows = db.execute("SELECT key FROM lock_queue WHERE release_id = ?", (release_id,))
    return [key for (key,) in rows]


def _head(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute(
        "SELECT release_id FROM lock_queue WHERE key = ? ORDER BY seq LIMIT 1", (key,)
    ).fetchone()
    return None if row is None else str(row[0])


def _headed_by(db: sqlite3.Connection, release_id: str) -> list[str]:
    """The keys whose queue the release heads, i.e. the locks it holds."""
    return [key for key in _locks_of(db, release_id) if _head(db, key) == release_id]


def _holds_all(db: sqlite3.Connection, release_id: str) -> bool:
    return len(_headed_by(db, release_id)) == len(_locks_of(db, release_id))


def _first_queued(db: sqlite3.Connection, release_id: str) -> int:
    (seq,) = db.execute(
        "SELECT MIN(seq) FROM lock_queue WHERE release_id = ?", (release_id,)
    ).fetchone()
    return int(seq)
