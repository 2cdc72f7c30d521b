"""One worker at a time per component: a lease in the store, kept alive by heartbeats.

A message can be delivered twice while its first worker is still alive (Redis hands an
unacknowledged message out again after its visibility timeout; RabbitMQ after a consumer
timeout). The copy must not run beside the original, and must take over promptly when
the original has died. So whoever carries out a component holds a lease on it, renewed
every third of its time to live; a copy waits until the original has finished (and
replays its recorded outcome) or until the lease has lapsed (the original is dead), and
then carries on from the original's journal.

One thread per worker process renews all the leases it holds (:class:`LeaseKeeper`): a
thread of each lease's own cost every component a thread's start and join.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from orchestrator.contract import Envelope, random_id
from orchestrator.observability import get_logger
from orchestrator.store import Finished, Held, Routed, Store, StoredRelease, Word

__all__ = ["Lease", "LeaseKeeper", "LeaseLost", "claimed"]

log = get_logger(__name__)

# The keeper's thread ends after this long without a lease to renew, and starts again
# with the next one: a process that is done with its work keeps no thread for it.
_IDLE_S: Final = 60.0


class LeaseLost(Exception):
    """The lease lapsed while this worker held it: another may own the component now."""


class Lease:
    """A worker's hold on a component while it carries out one command's work."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        name: str,
        owner: str,
        ttl_s: float,
        *,
        work: str,
        attempts: int,
        journaled: frozenset[str] = frozenset(),
        release: StoredRelease | None = None,
        kept: Envelope | None = None,
    ):
        self.name = name
        self.owner = owner
        self.ttl_s = ttl_s
        self.work = work
        self.attempts = attempts  # how often the work was taken, this time included
        self.journaled = journaled  # the work's journals that had entries when taken
        self.release = release  # the release and its component as stored when taken
        self.kept = kept  # the outcome kept under the key asked for, when taken
        self._keeper = keeper
        self._lost = threading.Event()
        self._finished = False

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def held(self) -> Held:
        """The lease as the store checks it when a change is made under it."""
        return Held(self.name, self.owner)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer ours; call before each effect."""
        if self._lost.is_set():
            raise LeaseLost(self.name)

    def finish(
        self, outcome: Envelope, last: Word | None = None, routed: Routed | None = None
    ) -> Finished:
        """Record how the work ended (with the worker's ``last`` word) and give the lease
        up, in one step (pushing the outcome where it was ``routed``, if the store can:
        :meth:`Store.finish_work`); says which outcome was kept (an earlier one, should
        a copy have recorded one first)."""
        self._keeper.let_go(self)  # renewing a lease given up would call it lost
        store = self._keeper.store
        finished = store.finish_work(self.work, outcome, self.name, self.owner, last, routed=routed)
        self._finished = True
        return finished

    def _start(self) -> None:
        self._keeper.keep(self)

    def _end(self) -> None:
        self._keeper.let_go(self)
        if not self._finished:
            self._keeper.store.release_lease(self.name, self.owner)

    def _lapsed(self) -> None:
        log.error("lease lost", lease=self.name)
        self._lost.set()


class LeaseKeeper:
    """Renews the leases a worker process holds, each every third of its time to live,
    from one thread; a lease found taken by another is marked lost (:meth:`Lease.check`)."""

    def __init__(self, store: Store):
        self.store = store
        self._due: dict[Lease, float] = {}  # each lease's next renewal, monotonic seconds
        self._renewing: Lease | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        # When the thread looks at the leases next, if it is waiting to (-inf: it is
        # looking now, or not running): a lease due later needs no wake-up to be seen.
        self._looks_at = -math.inf

    def keep(self, lease: Lease) -> None:
        with self._changed:
            due = self._due[lease] = time.monotonic() + lease.ttl_s / 3
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew, name="drover-lease-keeper", daemon=True
                )
                self._thread.start()
            elif due < self._looks_at:
                # Woken only when needed: a worker keeps a lease per component, and a
                # thread woken for nothing takes the interpreter from those at work.
                self._changed.notify_all()

    def let_go(self, lease: Lease) -> None:
        """Renew ``lease`` no more; returns once no renewal of it is under way."""
        with self._changed:
            self._due.pop(lease, None)
            while self._renewing is lease:
                self._changed.wait()

    def _renew(self) -> None:
        while (lease := self._next_due()) is not None:
            try:
                renewed = self.store.renew_lease(lease.name, lease.owner, lease.ttl_s)
            except Exception as exc:  # one thread keeps every lease: it must outlive this
                log.warning("lease renewal failed; retrying", lease=lease.name, error=repr(exc))
                renewed = True  # not known to be lost: tried again a third of its life on
            with self._changed:
                self._renewing = None
                if lease in self._due:  # not let go meanwhile
                    if renewed:
                        self._due[lease] = time.monotonic() + lease.ttl_s / 3
                    else:
                        del self._due[lease]
                        lease._lapsed()
                self._changed.notify_all()

    def _next_due(self) -> Lease | None:
        """The next lease to renew, once it is due; None (and the thread ends) when there
        has been none to renew for a while."""
        with self._changed:
            while True:
                if not self._due:
                    if not self._wait(_IDLE_S) and not self._due:
                        self._thread = None
                        return None
                    continue
                lease, due = min(self._due.items(), key=lambda item: item[1])
                wait_s = due - time.monotonic()
                if wait_s <= 0:
                    self._renewing = lease
                    self._due[lease] = math.inf  # under way: not due again until renewed
                    return lease
                self._wait(wait_s)

    def _wait(self, timeout_s: float) -> bool:
        """Wait (holding the condition) until notified or ``timeout_s`` passes."""
        self._looks_at = time.monotonic() + timeout_s
        try:
            return self._changed.wait(timeout_s)
        finally:
            self._looks_at = -math.inf


@contextmanager
def claimed(
    keeper: LeaseKeeper,
    work: str,
    name: str,
    *,
    journals: Sequence[str],
    component: tuple[str, str],
    owner_prefix: str,
    ttl_s: float,
    waiting: Callable[[str | None], None],
    waiting_every_s: float,
    kept: str | None = None,
    poll_s: float = 0.25,
) -> Iterator[Lease | Envelope]:
    """Hold the lease ``name`` for ``work`` in the block, waiting for it as long as its
    holder lives; or, if the work was finished (before, or while this waited), its outcome.

    Each look is one store call (:meth:`Store.claim_work`): the outcome, or the lease,
    one more attempt counted (:attr:`Lease.attempts`), which of the work's ``journals``
    have entries (:attr:`Lease.journaled`), the release with its ``component``
    (release id, name) as stored then (:attr:`Lease.release`) and the outcome ``kept``
    under that key (:attr:`Lease.kept`); or the holder. While it
    waits, ``waiting(holder)`` is called every ``waiting_every_s`` seconds, so that whoever
    waits for *this* worker knows it is alive.
    """
    owner = f"{owner_prefix}/{random_id()}"
    next_word = 0.0
    while True:
        claim = keeper.store.claim_work(
            work, name, owner, ttl_s, journals=journals, component=component, kept=kept
        )
        if claim.outcome is not None:
            yield claim.outcome
            return
        if claim.taken:
            break
        if time.monotonic() >= next_word:
            waiting(claim.holder)
            next_word = time.monotonic() + waiting_every_s
        time.sleep(poll_s)
    lease = Lease(
        keeper,
        name,
        owner,
        ttl_s,
        work=work,
        attempts=claim.attempts,
        journaled=claim.journaled,
        release=claim.release,
        kept=claim.kept,
    )
    lease._start()
    try:
        yield lease
    finally:
        lease._end()
