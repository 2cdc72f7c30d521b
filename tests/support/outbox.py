"""Commits of an outbox alone (release ``r1``, no state of its own), straight to a store
or through the coordinator's relay, as the relay's tests make them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.contract import Envelope
from orchestrator.outbox import OutboxRelay
from orchestrator.store import CommitResult, Queued, Store


def commit_outbox(
    store: Store,
    message_id: str,
    outbox: Sequence[Envelope],
    queued: Mapping[str, Queued] | None = None,
) -> CommitResult:
    return store.commit(
        "r1",
        message_id=message_id,
        expected_revision=None,
        state=None,
        outbox=outbox,
        timeline=outbox,
        queued=queued,
    )


def commit_through(
    relay: OutboxRelay, store: Store, message_id: str, outbox: Sequence[Envelope]
) -> CommitResult:
    """The commit as the relay runs it: with what it pushes onto queues, if anything."""
    return relay.commit(
        outbox, lambda messages, queued: commit_outbox(store, message_id, messages, queued)
    )
