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

from orchestrator.observability import get_logger
from orchestrator.store import Store, StoreUnavailable

__all__ = ["Lease", "LeaseLost", "held"]

log = get_logger(__name__)


class LeaseLost(Exception):
    """The lease lapsed while this worker held it: another may own the component now."""


class Lease:
    def __init__(self, store: Store, name: str, owner: str, ttl_s: float):
        self.name = name
        self.owner = owner
        self._store = store
        self._ttl_s = ttl_s
        self._lost = threading.Event()
        self._done = threading.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer ours; call before each effect."""
        if self._lost.is_set():
            raise LeaseLost(self.name)

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
def held(
    store: Store,
    name: str,
    *,
    owner_prefix: str,
    ttl_s: float,
    finished: Callable[[], bool],
    waiting: Callable[[str | None], None],
    waiting_every_s: float,
    poll_s: float = 0.25,
) -> Iterator[Lease | None]:
    """Hold the lease ``name`` for the block, waiting for it as long as its holder lives.

    Yields None, without the lease, if ``finished()`` turns true while waiting: the
    holder completed the work and there is nothing left to do but replay its outcome.
    While it waits, ``waiting(holder)`` is called every ``waiting_every_s`` seconds, so
    that whoever waits for *this* worker knows it is alive.
    """
    lease = Lease(store, name, f"{owner_prefix}/{uuid.uuid4().hex}", ttl_s)
    next_word = 0.0
    while not store.acquire_lease(name, lease.owner, ttl_s):
        if finished():
            yield None
            return
        if time.monotonic() >= next_word:
            waiting(store.lease_holder(name))
            next_word = time.monotonic() + waiting_every_s
        time.sleep(poll_s)
    heartbeat = threading.Thread(target=lease._keep_alive, name=f"lease {name}", daemon=True)
    heartbeat.start()
    try:
        yield lease
    finally:
        lease._done.set()
        heartbeat.join()
        store.release_lease(name, lease.owner)
