"""The coordinator's outbox relay: what commits put in the outbox, published and marked so.

A message is published only after the commit that put it in the outbox, and marked
published only after it went out; a crash in between publishes it again on the next
relay, which the receivers' seen sets make harmless. The relay reads the outbox, oldest
first, so it also finds what it was never told of: an earlier run's messages, a commit
whose answer was lost (it answers DUPLICATE when its message comes again), another
coordinator's leftovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from orchestrator.bus import Bus
from orchestrator.contract import Envelope
from orchestrator.drills import CrashPoints
from orchestrator.store import Store

__all__ = ["OutboxRelay"]

_RELAY_BATCH: Final = 500  # outbox messages read and published at a time


class OutboxRelay:
    def __init__(self, store: Store, bus: Bus, crash: CrashPoints):
        self._store = store
        self._bus = bus
        self._crash = crash
        self.wanted = False  # a commit since the last relay offered messages

    def offered(self, messages: Sequence[Envelope]) -> None:
        """A commit is about to offer ``messages`` to the outbox: relay after it."""
        self.wanted |= bool(messages)

    def relay(self) -> None:
        """Publish every committed message not yet published, oldest first."""
        self.wanted = False
        while True:
            pending = self._store.pending_outbox(_RELAY_BATCH)
            published: list[str] = []
            try:
                for message in pending:
                    self._bus.publish(message)
                    published.append(message.id)
                    self._crash.reached("coordinator.after_publish")
            finally:
                # A crash before this publishes those again on the next relay: the
                # receivers' seen sets make that harmless.
                self._store.mark_published(published)
            if len(pending) < _RELAY_BATCH:
                return  # that was all: what is committed from now on, the next relay sends
