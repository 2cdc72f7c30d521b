"""One worker at a time per component: a lease in the store, kept alive by heartbeats.

A message can be delivered twice while its first worker is still alive (Redis hands an
unacknowledged message out again after its visibility timeout; RabbitMQ after a consumer
timeout). The copy must not run beside the original, and must take over promptly when
the original has died. So whoever carries out a component holds a lease on it, renewed
every third of its time to live; a copy waits until the original has finished (and
replays its recorded outcome) or until the lease has lapsed (the original is dead), and
then carries on from the original's journal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from orchestrator.contract import Envelope
from orchestrator.observability import get_logger
from orchestrator.store import Store, StoreUnavailable

__all__ = ["Lease", "LeaseLost", "claimed"]

log = get_logger(__name__)


class LeaseLost(Exception):
    """The lease lapsed while this worker held it: another may own the component now."""


class Lease:
    """A worker's hold on a component while it carries out one command's work."""

    def __init__(
        self, store: Store, name: str, owner: str, ttl_s: float, *, work: str, attempts: int
    ):
        self.name = name
        self.owner = owner
        self.work = work
        self.attempts = attempts  # how often the work was taken, this time included
        self._store = store
        self._ttl_s = ttl_s
        self._lost = threading.Event()
        self._done = threading.Event()
        self._finished = False
        self._heartbeat = threading.Thread(
            target=self._keep_alive, name=f"lease {name}", daemon=True
        )

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer ours; call before each effect."""
        if self._lost.is_set():
            raise LeaseLost(self.name)

    def finish(self, outcome: Envelope) -> Envelope:
        """Record how the work ended and give the lease up, in one step; returns the
        outcome kept (an earlier one, should a copy have recorded one first)."""
        self._stop_heartbeat()  # renewing a lease given up would call it lost
        kept = self._store.finish_work(self.work, outcome, self.name, self.owner)
        self._finished = True
        return kept

    def _start(self) -> None:
        self._heartbeat.start()

    def _end(self) -> None:
        self._stop_heartbeat()
        if not self._finished:
            self._store.release_lease(self.name, self.owner)

    def _stop_heartbeat(self) -> None:
        self._done.set()
        self._heartbeat.join()

    def _keep_alive(self) -> None:
        while not self._done.wait(self._ttl_s / 3):
            try:
                renewed = self._store.renew_lease(self.name, self.owner, self._ttl_s)
            except StoreUnavailable as exc:
                log.warning("lease renewal failed; retrying", lease=self.name, error=str(exc))
                continue
            if not renewed:
                log.error("lease lost", lease=self.name)
                self._lost.set()
                return


@contextmanager
def claimed(
    store: Store,
    work: str,
    name: str,
    *,
    owner_prefix: str,
    ttl_s: float,
    waiting: Callable[[str | None], None],
    waiting_every_s: float,
    poll_s: float = 0.25,
) -> Iterator[Lease | Envelope]:
    """Hold the lease ``name`` for ``work`` in the block, waiting for it as long as its
    holder lives; or, if the work was finished (before, or while this waited), its outcome.

    Each look is one store call (:meth:`Store.claim_work`): the outcome, or the lease
    and one more attempt counted (:attr:`Lease.attempts`), or the holder. While it
    waits, ``waiting(holder)`` is called every ``waiting_every_s`` seconds, so that whoever
    waits for *this* worker knows it is alive.
    """
    owner = f"{owner_prefix}/{uuid.uuid4().hex}"
    next_word = 0.0
    while True:
        claim = store.claim_work(work, name, owner, ttl_s)
        if claim.outcome is not None:
            yield claim.outcome
            return
        if claim.taken:
            break
        if time.monotonic() >= next_word:
            waiting(claim.holder)
            next_word = time.monotonic() + waiting_every_s
        time.sleep(poll_s)
    lease = Lease(store, name, owner, ttl_s, work=work, attempts=claim.attempts)
    lease._start()
    try:
        yield lease
    finally:
        lease._end()
