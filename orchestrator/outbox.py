"""The coordinator's outbox relay: what commits put in the outbox, published and marked so.

A message is published only after the commit that put it in the outbox, and marked
published only after it went out; a crash in between publishes it again on the next
relay, which the receivers' seen sets make harmless.

Straight after a commit of this coordinator's, when the outbox held nothing else at the
last look, the messages just committed are published as they are in memory: reading them
back would find exactly them. Whatever else may be there (a publish that failed, a commit
whose answer was lost, another coordinator's leftovers) is found by reading the outbox,
oldest first, which the relay does then and on every tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from orchestrator.bus import Bus
from orchestrator.contract import Envelope
from orchestrator.drills import CrashPoints
from orchestrator.store import CommitResult, Store

__all__ = ["OutboxRelay"]

_RELAY_BATCH: Final = 500  # outbox messages read and published at a time


class OutboxRelay:
    def __init__(self, store: Store, bus: Bus, crash: CrashPoints):
        self._store = store
        self._bus = bus
        self._crash = crash
        self._committed: list[Envelope] = []  # put in the outbox since the last relay
        self._only_those = False  # whether the outbox holds nothing but _committed
        self.wanted = False  # a commit since the last relay offered messages

    def committed(self, result: CommitResult, messages: Sequence[Envelope]) -> CommitResult:
        """Note the outcome of a commit that offered ``messages`` to the outbox."""
        if messages:
            self.wanted = True
            if result is CommitResult.COMMITTED:
                self._committed.extend(messages)
            else:
                # A DUPLICATE may be a commit that landed before its answer was lost: its
                # messages are in the outbox without being in _committed.
                self._only_those = False
        return result

    def relay(self) -> None:
        """Publish every committed message not yet published, oldest first."""
        committed, self._committed, self.wanted = self._committed, [], False
        known = self._only_those
        self._only_those = False  # until the publishes below have all gone out
        if committed and known:
            self._publish(committed)
            self._only_those = True
            return
        while True:
            pending = self._store.pending_outbox(_RELAY_BATCH)
            self._publish(pending)
            if len(pending) < _RELAY_BATCH:
                self._only_those = True  # that was all: what is committed from now on
                return

    def _publish(self, messages: Sequence[Envelope]) -> None:
        published: list[str] = []
        try:
            for message in messages:
                self._bus.publish(message)
                published.append(message.id)
                self._crash.reached("coordinator.after_publish")
        finally:
            # A crash before this publishes those again on the next relay: the
            # receivers' seen sets make that harmless.
            self._store.mark_published(published)
