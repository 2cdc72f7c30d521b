"""The saga coordinator: the I/O shell around :func:`orchestrator.saga.decide`.

For each message: decode, load the release, decide, then commit the new state, the
outgoing messages (the outbox) and the timeline in one atomic store operation, ack the
message, and only then publish the outbox. A crash anywhere leaves either nothing done
(the message is delivered again) or a committed step whose outbox the relay publishes
on the next start. A message seen before is recognised by the store and changes nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from orchestrator.bus import Bus, Delivery
from orchestrator.contract import (
    Envelope,
    MessageDecodeError,
    SubmitRelease,
    decode,
    envelope,
)
from orchestrator.observability import get_logger, message_context
from orchestrator.plans import Fleet
from orchestrator.saga import Decision, ReleaseState, decide, refuse_submission
from orchestrator.store import CommitResult, DeadLetter, Store, StoreUnavailable

__all__ = ["COORDINATOR_ACTOR", "Coordinator"]

log = get_logger(__name__)

COORDINATOR_ACTOR: Final = "drover-coordinator"
_MAX_CONFLICT_RETRIES: Final = 20
_STORE_RETRY_S: Final = 1.0


class Coordinator:
    def __init__(self, store: Store, bus: Bus, fleet: Fleet):
        self._store = store
        self._bus = bus
        self._fleet = fleet

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Consume commands and events until ``stop`` is set."""
        self._bus.declare()
        self.relay()  # whatever a previous run committed but did not get to publish
        topology = self._bus.topology
        self._bus.consume(
            [topology.commands_queue, topology.coordinator_queue],
            self.handle,
            stop,
            on_ready=on_ready,
            tick=self._relay_safely,
        )

    def handle(self, delivery: Delivery) -> None:
        """Settle one delivery; never raises, so one bad message cannot stop the loop."""
        try:
            self._handle(delivery)
        except StoreUnavailable as exc:
            # Nothing was committed: give the message back and let the store recover.
            log.warning("store unavailable; message requeued", error=str(exc))
            time.sleep(_STORE_RETRY_S)
            delivery.requeue()
            return
        except Exception as exc:  # a bug must not take the coordinator down with it
            log.exception("message could not be handled; dead-lettered")
            self._dead_letter(delivery, f"internal error: {exc!r}")
            delivery.ack()
            return
        delivery.ack()
        self._relay_safely()

    def _relay_safely(self) -> None:
        # What is not published now stays in the outbox; the next tick tries again.
        try:
            self.relay()
        except Exception as exc:
            log.warning("outbox relay failed; will retry", error=repr(exc))

    def _handle(self, delivery: Delivery) -> None:
        try:
            message = decode(delivery.body)
        except MessageDecodeError as error:
            self._refuse(delivery, error)
            return
        with message_context(
            release_id=message.release_id,
            message_id=message.id,
            type=message.type,
            actor=message.actor,
            service=getattr(message.payload, "service", None),
        ):
            self.process(message)

    def process(self, message: Envelope) -> None:
        """Decide on one message and commit the result; safe to call twice for one message."""
        for _ in range(_MAX_CONFLICT_RETRIES):
            stored = self._store.load(message.release_id)
            if stored is not None and isinstance(message.payload, SubmitRelease):
                self._refuse_reused_id(message)
                return
            before = stored.state if stored else None
            decision = decide(before, message, self._fleet)
            if decision.state is None:
                log.warning("message for a release this store does not know; ignored")
                return
            result = self._commit(message, decision, stored.revision if stored else 0, before)
            if result is not CommitResult.CONFLICT:
                if result is CommitResult.COMMITTED and decision.state != before:
                    log.info("release advanced", state=decision.state.status)
                return
        raise RuntimeError(f"release {message.release_id}: gave up after repeated conflicts")

    def _refuse_reused_id(self, message: Envelope) -> None:
        # A redelivery of the submission that created the release is a duplicate and
        # changes nothing; a different submission under the same id is kept for on-call.
        result = self._store.commit(
            message.release_id,
            message_id=message.id,
            expected_revision=0,
            state=None,
            outbox=[],
            timeline=[],
        )
        if result is CommitResult.COMMITTED:
            log.warning("submission reuses an existing release id; dead-lettered")
            self._dead_letter_raw(message.encode(), "release id already in use", "commands")

    def _commit(
        self,
        message: Envelope,
        decision: Decision,
        revision: int,
        before: ReleaseState | None,
    ) -> CommitResult:
        outgoing = [
            envelope(
                payload,
                release_id=message.release_id,
                actor=COORDINATOR_ACTOR,
                causation=message,
                # Derived, not random: deciding the same message again yields the same
                # ids, which the store and every consumer recognise as already seen.
                message_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{message.id}/{index}").hex,
            )
            for index, payload in enumerate(decision.outgoing)
        ]
        return self._store.commit(
            message.release_id,
            message_id=message.id,
            expected_revision=revision,
            state=decision.state if decision.state != before else None,
            outbox=outgoing,
            timeline=[message, *outgoing],
        )

    def relay(self) -> None:
        """Publish every committed message not yet published, oldest first."""
        while True:
            pending = self._store.pending_outbox()
            if not pending:
                return
            for message in pending:
                self._bus.publish(message)
                self._store.mark_published([message.id])

    def _refuse(self, delivery: Delivery, error: MessageDecodeError) -> None:
        header = error.header
        if header is not None and header.type == "SubmitRelease":
            # The envelope is readable: answer the sender with a rejected release, so a
            # bad submission is visible where they will look for it.
            with message_context(release_id=header.release_id, message_id=header.id):
                log.warning("submission refused", problems=[str(p) for p in error.problems])
                self._reject_submission(header.release_id, header.id, header.actor, error)
            return
        log.warning("undecodable message dead-lettered", problems=[str(p) for p in error.problems])
        self._dead_letter(delivery, str(error))

    def _reject_submission(
        self, release_id: str, message_id: str, actor: str, error: MessageDecodeError
    ) -> None:
        if self._store.load(release_id) is not None:
            self._dead_letter_raw(error.raw, "a release with this id exists already; " + str(error))
            return
        decision = refuse_submission(
            release_id=release_id, actor=actor, at=datetime.now(UTC), problems=error.problems
        )
        assert decision.state is not None
        outgoing = [
            envelope(p, release_id=release_id, actor=COORDINATOR_ACTOR) for p in decision.outgoing
        ]
        self._store.commit(
            release_id,
            message_id=message_id,
            expected_revision=0,
            state=decision.state,
            outbox=outgoing,
            timeline=outgoing,
        )

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._dead_letter_raw(delivery.body, reason, delivery.queue)

    def _dead_letter_raw(self, raw: bytes, reason: str, source: str = "") -> None:
        letter = DeadLetter(
            id=uuid.uuid4().hex, at=datetime.now(UTC), reason=reason, raw=raw, source=source
        )
        self._store.add_dead_letter(letter)
