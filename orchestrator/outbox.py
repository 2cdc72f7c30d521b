"""The coordinator's outbox relay: what commits put in the outbox, published and marked so.

A message is published only after the commit that put it in the outbox, and marked
published only after it went out; a crash in between publishes it again on the next
relay, which the receivers' seen sets make harmless.

The commits made through the relay (:meth:`OutboxRelay.commit`) tell it what they put in
the outbox, so after each message handled it publishes those from memory, with no read
of the store on the way from a component's outcome to the next command. Whenever it
cannot be sure that the outbox holds nothing else (a commit that raised, and so may or
may not have landed; a message committed before, whose first commit's answer was lost;
a publish that failed; the relay's own start), it reads the outbox instead, oldest
first. The coordinator's tick reads it regardless (:meth:`OutboxRelay.sweep`), for what
no commit of its own left: an earlier run's messages, another coordinator's.

Where the store is the broker's Redis, a worker's command does not go through the outbox
at all: the commit that decides it pushes it onto its service's queue, as the broker would
keep it once published (:meth:`Bus.queued`), in the same atomic step. Nothing is left to
publish after the commit, and no crash can come between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from orchestrator.bus import BrokerUnavailable, Bus
from orchestrator.contract import Envelope
from orchestrator.drills import CrashPoints
from orchestrator.store import CommitResult, Queued, Store

__all__ = ["OutboxRelay"]

_RELAY_BATCH: Final = 500  # outbox messages read and published at a time

# A commit, given the messages for its outbox and those of them to push onto their queues.
Commit = Callable[[Sequence[Envelope], Mapping[str, Queued]], CommitResult]


class OutboxRelay:
    def __init__(self, store: Store, bus: Bus, crash: CrashPoints):
        self._store = store
        self._bus = bus
        self._crash = crash
        self._committed: list[Envelope] = []  # known in the outbox, not yet published
        self._unsure = True  # the outbox may hold messages this relay was not told of
        self._queues_in_commit = store.shares_redis_with(bus.broker_url)

    @property
    def wanted(self) -> bool:
        """Whether a commit since the last relay may have left messages to publish."""
        return self._unsure or bool(self._committed)

    def commit(self, messages: Sequence[Envelope], commit: Commit) -> CommitResult:
        """Run ``commit`` with ``messages`` for its outbox (those it can push onto their
        queues, to push), and note what it put in the outbox for the next :meth:`relay`."""
        queued = self._queued(messages)
        unsure, self._unsure = self._unsure, True  # should ``commit`` raise, it may have landed
        result = commit(messages, queued)
        if result is CommitResult.COMMITTED:
            self._committed.extend(m for m in messages if m.id not in queued)
            for message in messages:
                if message.id in queued:
                    self._bus.metrics.record(message)  # as its publish would count it
        if result is not CommitResult.DUPLICATE:  # a duplicate's first commit may be unpublished
            self._unsure = unsure
        return result

    def _queued(self, messages: Sequence[Envelope]) -> dict[str, Queued]:
        """Those of ``messages`` the commit can push onto their queues, as pushed."""
        if not self._queues_in_commit:
            return {}
        queued: dict[str, Queued] = {}
        for message in messages:
            try:
                on_queue = self._bus.queued(message)
            except BrokerUnavailable:
                return {}  # all to the outbox: the relay publishes them once it can
            if on_queue is not None:
                queued[message.id] = on_queue
        return queued

    def relay(self) -> None:
        """Publish what the commits since the last relay put in the outbox, or the whole
        outbox if it may hold more than they said."""
        if self._unsure:
            self.sweep()
            return
        committed, self._committed = self._committed, []
        self._unsure = True  # until every one is out and marked: what is left is read back
        self._publish(committed)
        self._unsure = False

    def sweep(self) -> None:
        """Publish every committed message not yet published, oldest first."""
        self._committed = []  # in the outbox too: read with the rest
        self._unsure = True  # until the whole outbox is out and marked
        while True:
            pending = self._store.pending_outbox(_RELAY_BATCH)
            self._publish(pending)
            if len(pending) < _RELAY_BATCH:
                break  # that was all: what is committed from now on, the next relay sends
        self._unsure = False

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
