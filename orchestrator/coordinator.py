"""The saga coordinator: the I/O shell around :func:`orchestrator.saga.decide`.

For each message: decode, load the release, decide, then commit the new state, the
outgoing messages (the outbox) and the timeline in one atomic store operation, and only
then publish the outbox and ack the message. A crash anywhere leaves either nothing done
(the message is delivered again) or a committed step whose outbox the relay publishes
on the next start. A message seen before (delivered again after its commit) is
recognised by the store and changes nothing.

The coordinator remembers the releases it committed (:class:`KnownReleases`) and decides
on that copy instead of loading and parsing the release for every report; the copy is
only a guess at the stored revision, which every commit checks, so a release another
coordinator moved on is loaded again (a CONFLICT) and nothing is decided on a stale copy.
"""

from __future__ import annotations

import itertools
import operator
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from orchestrator.bus import Bus, Delivery
from orchestrator.contract import (
    CheckDeadlines,
    Envelope,
    Message,
    MessageDecodeError,
    ReleaseQueued,
    StartRelease,
    SubmitRelease,
    decode,
    derived_id,
    envelope,
)
from orchestrator.drills import CrashPoints
from orchestrator.fleet import Fleet
from orchestrator.manual_locks import expire, lock_key
from orchestrator.observability import get_logger, message_context
from orchestrator.outbox import OutboxRelay
from orchestrator.saga import (
    Decision,
    ReleaseState,
    ReleaseStatus,
    decide,
    overdue,
    refuse_submission,
)
from orchestrator.store import (
    KEEP_WAKE,
    CommitResult,
    DeadLetter,
    KeepWake,
    Store,
    StoredRelease,
    StoreUnavailable,
    awaited_word,
)

__all__ = ["COORDINATOR_ACTOR", "Coordinator"]

log = get_logger(__name__)

COORDINATOR_ACTOR: Final = "drover-coordinator"
_MAX_CONFLICT_RETRIES: Final = 20
_STORE_RETRY_S: Final = 1.0
# Releases whose last committed state the coordinator keeps: more than run at once on any
# fleet we know; the least recently used is forgotten first, and loaded again if needed.
_KNOWN_RELEASES: Final = 1000


def _wake_time(state: ReleaseState) -> datetime | None:
    """When the coordinator must look at a release even if no message comes."""
    if state.status.is_terminal:
        return state.finished_at  # at once: its locks are to be freed (again, after a crash)
    if state.status is ReleaseStatus.QUEUED:
        return state.updated_at  # every tick until it starts: retry its locks
    return state.next_deadline


class ReadUpTo:
    """The moment before which every message sent to the coordinator has been read: the
    time its deadlines are judged at.

    Judged by the wall clock, a coordinator that falls behind (a backlog, a stalled
    machine) would time out components whose reports were sent in time and wait unread
    in its queue; their resends would add to the backlog, and the release would be
    rolled back for the coordinator's own delay. So a deadline is passed only if no
    report came by then *as far as the coordinator has read*: up to the latest message
    it handled while messages keep coming, up to the end of its last wait that found
    the queues empty. Until it knows either (just started) it judges nothing.
    """

    def __init__(self) -> None:
        self._at: float | None = None  # epoch seconds

    def handled(self, sent_at: float | None) -> None:
        """A message was handled; ``sent_at`` is when it was published, if known."""
        if sent_at is not None:
            self._at = sent_at if self._at is None else max(self._at, sent_at)

    def caught_up(self, until: float) -> None:
        """The queues were found empty: whatever was sent before ``until`` was read."""
        self._at = until if self._at is None else max(self._at, until)

    def moment(self) -> datetime | None:
        return None if self._at is None else datetime.fromtimestamp(self._at, UTC)


class KnownReleases:
    """The releases this coordinator last committed or loaded, most recently used last."""

    def __init__(self, store: Store, capacity: int = _KNOWN_RELEASES) -> None:
        self._store = store
        self._capacity = capacity
        self._releases: OrderedDict[str, StoredRelease] = OrderedDict()

    def get(self, release_id: str) -> StoredRelease | None:
        """The release as last seen here, loaded from the store if it is not known."""
        known = self._releases.get(release_id)
        if known is None:
            known = self._store.load(release_id)
            if known is None:
                return None
        self.remember(release_id, known)
        return known

    def remember(self, release_id: str, stored: StoredRelease) -> None:
        self._releases[release_id] = stored
        self._releases.move_to_end(release_id)
        if len(self._releases) > self._capacity:
            self._releases.popitem(last=False)

    def forget(self, release_id: str) -> None:
        self._releases.pop(release_id, None)


class Coordinator:
    def __init__(
        self, store: Store, bus: Bus, fleet: Fleet, crash_points: CrashPoints | None = None
    ):
        self._store = store
        self._bus = bus
        self._fleet = fleet
        self._crash = crash_points or CrashPoints()
        self._known = KnownReleases(store)
        self._read_up_to = ReadUpTo()
        self._outbox = OutboxRelay(store, bus, self._crash)

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Consume commands and events until ``stop`` is set."""
        self._bus.declare()
        self._bus.declare_service_queues(self._fleet.service_names())
        self._outbox.sweep()  # whatever a previous run committed but did not get to publish
        topology = self._bus.topology
        self._bus.consume(
            [topology.commands_queue, topology.coordinator_queue],
            self.handle,
            stop,
            on_ready=on_ready,
            tick=self._tick,
            on_idle=self._read_up_to.caught_up,
        )

    def handle(self, delivery: Delivery) -> None:
        """Settle one delivery; never raises, so one bad message cannot stop the loop."""
        self._read_up_to.handled(delivery.sent_at)
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
        # The commands go out before the message that caused them is acknowledged: the
        # next component waits for no other round trip. A crash in between delivers the
        # message again, and the seen set makes it change nothing.
        if self._outbox.wanted:  # the tick sweeps regardless, for what a crash left
            self._relay_safely(self._outbox.relay)
        delivery.ack()

    def _relay_safely(self, relay: Callable[[], None]) -> None:
        # What is not published now stays in the outbox; the next tick tries again.
        try:
            relay()
        except Exception as exc:
            log.warning("outbox relay failed; will retry", error=repr(exc))

    def _handle(self, delivery: Delivery) -> None:
        try:
            message = decode(delivery.body)
        except MessageDecodeError as error:
            self._refuse(delivery, error)
            return
        if isinstance(message.payload, StartRelease | CheckDeadlines):
            # The coordinator gives these to itself; from the bus they would let anyone
            # start a release past its locks, or time components out early (or keep them
            # alive with last words nobody said).
            log.warning("coordinator-only command arrived on the bus; dead-lettered")
            self._dead_letter(delivery, f"{message.type} is the coordinator's own command")
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
        committed = self._decide_and_commit(message)
        if committed is None:
            return
        if committed.status is ReleaseStatus.QUEUED:
            # Submitted, approved or retried: it joins the queues of its locks.
            self._try_to_start(committed)
        elif committed.status.is_terminal:
            self._free_locks(committed.id)

    def _decide_and_commit(self, message: Envelope) -> ReleaseState | None:
        """The release as committed after ``message``; None if nothing was committed."""
        for _ in range(_MAX_CONFLICT_RETRIES):
            stored = self._known.get(message.release_id)
            if stored is not None and isinstance(message.payload, SubmitRelease):
                self._refuse_reused_id(message)
                return None
            before = stored.state if stored else None
            decision = decide(before, message, self._fleet)
            if decision.state is None:
                log.warning("message for a release this store does not know; ignored")
                return None
            revision = stored.revision if stored else 0
            result = self._commit(message, decision, revision, before)
            if result is CommitResult.CONFLICT:
                self._known.forget(message.release_id)
                continue
            if result is CommitResult.DUPLICATE or decision.state == before:
                return None
            self._known.remember(message.release_id, StoredRelease(decision.state, revision + 1))
            self._crash.reached("coordinator.after_commit", decision.state.status)
            log.info("release advanced", state=decision.state.status)
            return decision.state
        raise RuntimeError(f"release {message.release_id}: gave up after repeated conflicts")

    # --- locks and wake-ups: what no message asks for ------------------------------------

    def _tick(self) -> None:
        """About once a second: publish what is pending, and wake releases that are due."""
        self._relay_safely(self._outbox.sweep)
        judged_now = self._read_up_to.moment()
        try:
            for held in expire(self._store, datetime.now(UTC)):
                log.info("a lock's time is up", lock=lock_key(held.environment, held.service))
            if judged_now is None:
                return
            for release_id in self._store.due(judged_now):
                self._wake(release_id, judged_now)
        except StoreUnavailable as exc:
            log.warning("store unavailable; wake-ups wait", error=str(exc))

    def _wake(self, release_id: str, now: datetime) -> None:
        stored = self._known.get(release_id)
        if stored is None:
            return
        state = stored.state
        with message_context(release_id=release_id):
            if state.status.is_terminal:
                self._free_locks(release_id)  # a crash came between its end and this
            elif state.status is ReleaseStatus.QUEUED:
                self._try_to_start(state)
            else:
                check = CheckDeadlines(now=now, last_words=self._last_words(state, now))
                self.process(self._own(check, release_id, f"check@{now}"))

    def _last_words(self, state: ReleaseState, now: datetime) -> dict[str, datetime]:
        """When the workers of the components overdue by ``now`` last reported.

        Their reports go to the store, not to the coordinator: read only now, when a
        deadline has come, instead of deciding on every step of every component.
        """
        words = {awaited_word(c): c.name for c in overdue(state, now)}
        if not words:
            return {}
        return {words[w]: at for w, at in self._store.last_words(state.id, words).items()}

    def _try_to_start(self, state: ReleaseState) -> None:
        """Start the release if it holds all its locks; otherwise say what it waits for."""
        keys = [lock_key(state.environment, service) for service in state.services()]
        if self._store.acquire_locks(state.id, keys):
            self.process(self._own(StartRelease(), state.id, f"start/{state.attempt}"))
            return
        behind = sorted({self._store.lock_queue(key)[0] for key in keys} - {state.id})
        queued = ReleaseQueued(behind=tuple(behind))
        note = self._own(queued, state.id, f"queued/{state.attempt}")
        self._note(state.id, note.id, [note])

    def _free_locks(self, release_id: str) -> None:
        for waiting in self._store.release_locks(release_id):
            self._start(waiting)
        # Ids of a release's own messages carry its attempt: a retried release queues,
        # starts and frees its locks again, and none of that is a duplicate of the first.
        stored = self._known.get(release_id)
        attempt = stored.state.attempt if stored else 1
        self._note(release_id, derived_id(release_id, f"locks-freed/{attempt}"), wake_at=None)

    def _start(self, release_id: str) -> None:
        stored = self._known.get(release_id)
        if stored is not None:
            start = self._own(StartRelease(), release_id, f"start/{stored.state.attempt}")
            self.process(start)

    def _note(
        self,
        release_id: str,
        message_id: str,
        messages: Sequence[Envelope] = (),
        wake_at: datetime | KeepWake | None = KEEP_WAKE,
    ) -> CommitResult:
        """Commit what the shell learned without deciding: the state stays as it is."""
        return self._outbox.commit(
            messages,
            lambda outbox, queued: self._store.commit(
                release_id,
                message_id=message_id,
                expected_revision=None,
                state=None,
                outbox=outbox,
                queued=queued,
                timeline=outbox,
                wake_at=wake_at,
            ),
        )

    def _own(self, payload: Message, release_id: str, purpose: str) -> Envelope:
        """A message the coordinator gives itself, with an id that repeats for the same purpose."""
        return envelope(
            payload,
            release_id=release_id,
            actor=COORDINATOR_ACTOR,
            message_id=derived_id(release_id, purpose),
        )

    def _refuse_reused_id(self, message: Envelope) -> None:
        # A redelivery of the submission that created the release is a duplicate and
        # changes nothing; a different submission under the same id is kept for on-call.
        if self._note(message.release_id, message.id) is CommitResult.COMMITTED:
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
                message_id=derived_id(message.id, index),
            )
            for index, payload in enumerate(decision.outgoing)
        ]
        changed = decision.state != before
        return self._outbox.commit(
            outgoing,
            lambda outbox, queued: self._store.commit(
                message.release_id,
                message_id=message.id,
                expected_revision=revision,
                state=decision.state if changed else None,
                outbox=outbox,
                queued=queued,
                timeline=[message, *outbox],
                wake_at=_wake_time(decision.state) if changed and decision.state else KEEP_WAKE,
                changed_components=_changed_components(before, decision.state),
            ),
        )

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
        self._outbox.commit(
            outgoing,
            lambda outbox, queued: self._store.commit(
                release_id,
                message_id=message_id,
                expected_revision=0,
                state=decision.state,
                outbox=outbox,
                queued=queued,
                timeline=outbox,
            ),
        )

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._dead_letter_raw(delivery.body, reason, delivery.queue)

    def _dead_letter_raw(self, raw: bytes, reason: str, source: str = "") -> None:
        letter = DeadLetter(
            id=uuid.uuid4().hex, at=datetime.now(UTC), reason=reason, raw=raw, source=source
        )
        self._store.add_dead_letter(letter)


def _changed_components(
    before: ReleaseState | None, after: ReleaseState | None
) -> list[str] | None:
    """The components ``after`` changed, by name (None: all of them).

    The saga's index of the release says, when it followed the decision from one to the
    other (:meth:`~orchestrator.saga.index.ComponentIndex.changed`); else identity does:
    the saga copies a release with the components it did not touch shared, not copied.
    """
    if before is None or after is None:
        return None
    was, now = before.components, after.components
    if now is was:
        return []
    changed = after.index.changed(was, now)
    if changed is not None:
        return changed
    # Walked in C's loops: a wide release has thousands of components.
    differs = map(operator.is_not, map(was.get, now), now.values())
    return list(itertools.compress(now, differs))
