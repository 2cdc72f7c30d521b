"""The SQLite store commits the writes of several threads together (one transaction, one
wait for the disk): each caller still gets its own answer, a write that fails is undone
alone, and no write a caller was answered for is lost, even to a process killed at once.
A commit waits for the disk whenever it holds a write of Drover's own; one holding only
the simulated fleet's changes and words recorded ahead does not, and is still kept when
the process is killed.

To make writes wait together, a test holds the store's connection the way a long read
does; the writes then queue behind it, and whichever thread gets the connection next
commits them all.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.contract import Envelope, Step, StepStarted, envelope
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import (
    CommitResult,
    Effect,
    Pending,
    StepDone,
    StoreUnavailable,
    Word,
    word_key,
)
from orchestrator.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with closing(SqliteStore(str(tmp_path / "drover.db"))) as opened:
        yield opened


@contextmanager
def _writes_queued(store: SqliteStore, count: int) -> Iterator[ThreadPoolExecutor]:
    """Writes submitted inside wait behind a reader until ``count`` of them are queued."""
    with ThreadPoolExecutor(max_workers=count) as pool, store._read():
        yield pool
        deadline = time.monotonic() + 10
        while len(store._waiting) < count:
            assert time.monotonic() < deadline, f"{len(store._waiting)} of {count} queued"
            time.sleep(0.001)


def _state(release_id: str) -> ReleaseState:
    return ReleaseState(
        id=release_id,
        environment="prod",
        reason="test",
        requested_by="alice",
        status=ReleaseStatus.RUNNING,
        created_at=T0,
        updated_at=T0,
    )


def _report(release_id: str) -> Envelope:
    return envelope(
        StepStarted(environment="prod", service="api", step=Step.DRAIN, batch=1, hosts=("h",)),
        release_id=release_id,
        actor="worker-1",
    )


def _commit(store: SqliteStore, release_id: str, wake_at: datetime = T0) -> CommitResult:
    report = _report(release_id)
    return store.commit(
        release_id,
        message_id=f"{release_id}-m1",
        expected_revision=0,
        state=_state(release_id),
        outbox=[report],
        timeline=[report],
        wake_at=wake_at,
    )


@contextmanager
def _waits_for_disk_at_each_commit(store: SqliteStore) -> Iterator[list[bool]]:
    """For each commit the store makes, whether it waited for the disk (the connection's
    ``synchronous`` level when it committed: FULL, or NORMAL)."""
    level = {"FULL": True, "NORMAL": False}
    with store._read() as db:
        durable = [db.execute("PRAGMA synchronous").fetchone()[0] == 2]
    commits: list[bool] = []

    def seen(statement: str) -> None:
        if statement.startswith("PRAGMA synchronous = "):
            durable[0] = level[statement.rsplit(" ", 1)[1]]
        elif statement == "COMMIT":
            commits.append(durable[0])

    store._db.set_trace_callback(seen)
    try:
        yield commits
    finally:
        store._db.set_trace_callback(None)


def test_a_commit_waits_for_the_disk_unless_it_holds_only_the_fleets_changes(
    store: SqliteStore,
) -> None:
    effect = Effect("r1", "web-1", "deploy")
    word = Word("r1", word_key("web", rollback=False, attempt=1), T0, [_report("r1")])
    with _waits_for_disk_at_each_commit(store) as commits:
        store.set_host_version("prod", "web", "web-1", "2.0.0", effect).wait()
        store.set_drained("prod", "web", "web-2", True, None)
        store.record_reports_ahead(word).wait()  # the drain with it
        with _writes_queued(store, 2) as pool:  # Drover's own write shares a commit
            pool.submit(store.set_service_state, "prod", "web", "live_colour", "green", None)
            pool.submit(store.set_note, "n1", "v")
        store.set_note("n2", "v")
        store.record_reports_ahead(word)
        store.set_host_version("prod", "web", "web-2", "2.0.0", effect).wait()  # the word too
        _commit(store, "r2")

    assert commits == [False, False, True, True, False, True]
    assert store.host_versions("prod", "web") == {"web-1": "2.0.0", "web-2": "2.0.0"}
    assert len(store.timeline("r1")) == 2


def test_a_write_committed_already_is_answered_while_another_holds_the_connection(
    store: SqliteStore,
) -> None:
    word = Word("r1", word_key("web", rollback=False, attempt=1), T0, [_report("r1")])
    ahead = store.record_reports_ahead(word)
    store.set_note("n1", "v")  # its commit carries the word
    with ThreadPoolExecutor(max_workers=1) as pool, store._read():  # as a commit would
        pool.submit(ahead.wait).result(timeout=10)  # answered, not queued behind it

    assert len(store.timeline("r1")) == 1


def test_no_write_of_a_thread_is_kept_after_one_of_its_own_that_failed(
    store: SqliteStore,
) -> None:
    work = "r1/web/deploy/1"
    key = word_key("web", rollback=False, attempt=1)
    with store._read() as db:  # the store refuses web-2's change, as a failing disk might
        db.execute(
            "CREATE TEMP TRIGGER refused BEFORE INSERT ON host_versions"
            " WHEN NEW.host = 'web-2' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )

    def deployed(host: str) -> tuple[Pending[bool], Pending[None]]:
        """A host's change and then its journal entry, as the simulator and a worker
        make them: neither waited for."""
        change = store.set_host_version("prod", "web", host, "2.0.0", None)
        entry = Word("r1", key, T0, done=[StepDone(work, host, "deploy")])
        return change, store.record_reports_ahead(entry)

    deployed("web-1")
    refused, entry = deployed("web-2")
    _, after = deployed("web-3")
    with ThreadPoolExecutor(max_workers=1) as other:  # its commit takes them all
        other.submit(store.set_note, "n1", "v").result()

    assert store.note("n1") == "v"  # another thread's write is not held back
    assert store.host_versions("prod", "web") == {"web-1": "2.0.0"}
    assert store.progress(work) == {"web-1": ["deploy"]}  # no entry without its change
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        refused.wait()
    with pytest.raises(StoreUnavailable, match="a write made before it failed: refused"):
        entry.wait()
    with pytest.raises(StoreUnavailable, match="a write made before it failed: refused"):
        after.wait()
    assert store.set_host_version("prod", "web", "web-3", "2.0.0", None).wait() is True


def test_threads_writing_at_once_each_get_their_own_answer(store: SqliteStore) -> None:
    threads, each = 8, 40

    def count(thread: int) -> list[int]:
        # every thread counts one shared message and one of its own
        return [store.count_attempt("shared") for _ in range(each)] + [
            store.count_attempt(f"own-{thread}") for _ in range(each)
        ]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(count, range(threads)))

    shared = sorted(n for answer in answers for n in answer[:each])
    assert shared == list(range(1, threads * each + 1))  # each count answered once
    assert all(answer[each:] == list(range(1, each + 1)) for answer in answers)


def test_a_write_that_fails_is_undone_alone(store: SqliteStore) -> None:
    naive = datetime(2026, 3, 1, 12, 0)  # refused, after the state and the seen record
    with _writes_queued(store, 3) as pool:
        good = [pool.submit(_commit, store, f"r{n}") for n in (1, 2)]
        bad = pool.submit(_commit, store, "r-bad", naive)

    assert [future.result() for future in good] == [CommitResult.COMMITTED] * 2
    with pytest.raises(ValueError, match="time zone"):
        bad.result()
    assert store.load("r-bad") is None
    assert store.timeline("r-bad") == []
    assert _commit(store, "r-bad") is CommitResult.COMMITTED  # not taken for a duplicate
    assert [m.release_id for m in store.pending_outbox()] == ["r1", "r2", "r-bad"]


def test_a_full_file_answers_no_write_it_did_not_keep(store: SqliteStore) -> None:
    with store._read() as db:  # room for a few notes of this size, not for all of them
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 12}")
    value = "x" * 9000

    def note(key: str) -> Callable[[], None]:
        return lambda: store.set_note(key, value)

    keys = [f"note-{n}" for n in range(12)]
    with _writes_queued(store, len(keys)) as pool:
        written: dict[str, Future[None]] = {key: pool.submit(note(key)) for key in keys}

    kept = {key for key, future in written.items() if future.exception() is None}
    refused = set(keys) - kept
    assert refused, "the file never filled up"
    assert all(isinstance(written[key].exception(), StoreUnavailable) for key in refused)
    assert set(store.notes("note-")) == kept


_WRITER = textwrap.dedent(
    """
    import sys, threading
    from orchestrator.store.sqlite import SqliteStore

    store = SqliteStore(sys.argv[1])
    said = threading.Lock()

    def write(thread):
        for n in range(100_000):
            key = f"note-{thread}-{n}"
            if sys.argv[2] == "notes":  # Drover's own
                store.set_note(key, "x" * 200)
            else:  # the simulated fleet's, waited for
                store.set_host_version("prod", "web", key, "2.0.0", None).wait()
            with said:
                print(key, flush=True)

    for thread in range(4):
        threading.Thread(target=write, args=(thread,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("writes", ["notes", "host versions"])
def test_a_process_killed_while_writing_loses_no_answered_write(
    tmp_path: Path, writes: str
) -> None:
    path = str(tmp_path / "drover.db")
    answered = []
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, path, writes], stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None
        try:
            while len(answered) < 400:
                line = writer.stdout.readline()
                assert line, f"the writer stopped after {len(answered)} notes"
                answered.append(line.strip())
        finally:
            os.kill(writer.pid, signal.SIGKILL)
        answered += [line.strip() for line in writer.stdout if line.strip()]

    with closing(SqliteStore(path)) as reopened:
        if writes == "notes":
            kept = reopened.notes("note-")
        else:
            kept = reopened.host_versions("prod", "web")
    assert len(answered) >= 400
    assert set(answered) <= set(kept)
