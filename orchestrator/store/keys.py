"""Every Redis key the store uses, written down once.

All keys start with the namespace, so several Drover installations (or test runs) can
share one Redis. The parts after it are release ids, environment and service names that
the contract already holds to patterns without ``:``, so keys cannot run into each other.
Free-form parts (message and command ids, lease names, lock keys) may hold anything, so
each comes last, after a prefix that no other key starts with.

Two key families are named by the lock scripts themselves, from a prefix and a release
id or lock key, because which keys a lock change touches is only known once the script
has read the queues: :attr:`Keys.lock_queue_prefix` and :attr:`Keys.locks_of_prefix`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    namespace: str

    # --- one release ---------------------------------------------------------------------

    def release(self, release_id: str) -> str:
        # HASH: "state" -> ReleaseState JSON without its components, "revision" -> int
        # bumped by every state commit
        return f"{self.namespace}:release:{release_id}"

    def components(self, release_id: str) -> str:
        # HASH: component name -> ComponentState JSON
        return f"{self.namespace}:release:{release_id}:components"

    def seen(self, release_id: str) -> str:
        # SET: ids of messages committed for this release, and of the messages it sent
        return f"{self.namespace}:release:{release_id}:seen"

    def timeline(self, release_id: str) -> str:
        # LIST: the release's Envelope JSON, oldest first, in the order they were recorded
        return f"{self.namespace}:release:{release_id}:timeline"

    def last_words(self, release_id: str) -> str:
        # HASH: word key (see store.word_key) -> when a worker last reported (epoch seconds)
        return f"{self.namespace}:release:{release_id}:words"

    def effects(self, release_id: str) -> str:
        # HASH: JSON [environment, service, host, step] -> how often that effect was done
        return f"{self.namespace}:release:{release_id}:effects"

    # --- across releases -----------------------------------------------------------------

    @property
    def release_index(self) -> str:
        # ZSET: release id scored by created_at (epoch seconds), for newest-first listing
        return f"{self.namespace}:releases"

    @property
    def outbox_sequence(self) -> str:
        # STRING: INCR counter giving every outbox entry its place in the global order
        return f"{self.namespace}:outbox:seq"

    @property
    def outbox_pending(self) -> str:
        # ZSET: ids of committed, not yet published messages, scored by outbox_sequence
        return f"{self.namespace}:outbox:pending"

    @property
    def outbox_bodies(self) -> str:
        # HASH: message id -> Envelope JSON, for the ids in outbox_pending
        return f"{self.namespace}:outbox:bodies"

    @property
    def wake_index(self) -> str:
        # ZSET: release id scored by when it next needs the coordinator (epoch seconds);
        # a release without a wake-up time is absent
        return f"{self.namespace}:wakes"

    @property
    def dead_letter_sequence(self) -> str:
        # STRING: INCR counter giving every dead letter its place in the order they came
        return f"{self.namespace}:dead-letters:seq"

    @property
    def dead_letter_order(self) -> str:
        # ZSET: dead letter id scored by dead_letter_sequence, oldest first
        return f"{self.namespace}:dead-letters:order"

    @property
    def dead_letter_bodies(self) -> str:
        # HASH: dead letter id -> JSON {id, at, reason, raw (base64), source}
        return f"{self.namespace}:dead-letters:bodies"

    # --- locks: FIFO queues of releases ----------------------------------------------------

    @property
    def lock_sequence(self) -> str:
        # STRING: INCR counter; a release takes one number each time it joins queues
        return f"{self.namespace}:lock-seq"

    @property
    def lock_queue_prefix(self) -> str:
        # prefix of every lock_queue key; the lock scripts append the lock key
        return f"{self.namespace}:lock:"

    def lock_queue(self, key: str) -> str:
        # ZSET: release ids queued for this lock, scored by the lock_sequence number they
        # joined with; the lowest holds the lock. Absent when nobody is queued.
        return self.lock_queue_prefix + key

    @property
    def locks_of_prefix(self) -> str:
        # prefix of every locks_of key; the lock scripts append the release id
        return f"{self.namespace}:locks-of:"

    def locks_of(self, release_id: str) -> str:
        # ZSET: the lock keys a release is queued for, scored like its lock_queue entries
        return self.locks_of_prefix + release_id

    # --- the fleet -----------------------------------------------------------------------

    def host_versions(self, environment: str, service: str) -> str:
        # HASH: host -> the version Drover last recorded for it
        return f"{self.namespace}:hosts:{environment}:{service}"

    @property
    def notes(self) -> str:
        # HASH: note key -> value (manual locks, their history)
        return f"{self.namespace}:notes"

    def service_state(self, environment: str, service: str) -> str:
        # HASH: field -> value, the simulator's facts about a service (colour, flags)
        return f"{self.namespace}:service-state:{environment}:{service}"

    def drained(self, environment: str, service: str) -> str:
        # SET: hosts the simulator has out of service
        return f"{self.namespace}:drained:{environment}:{service}"

    # --- workers ---------------------------------------------------------------------------

    def lease(self, name: str) -> str:
        # STRING: the owner holding the lease, with a PX expiry set on Redis's own clock
        return f"{self.namespace}:lease:{name}"

    def progress(self, command_id: str) -> str:
        # ZSET: JSON [host, step] of each step done for a command, scored by the order
        # they were recorded (the set's size when each was added)
        return f"{self.namespace}:progress:{command_id}"

    def outcome(self, command_id: str) -> str:
        # STRING: the Envelope JSON of the event that ended a command; written once
        return f"{self.namespace}:outcome:{command_id}"

    def attempts(self, message_id: str) -> str:
        # STRING: INCR count of the times workers started a command; expires ATTEMPT_COUNT_TTL_S
        # (orchestrator.store.shared) after the last one
        return f"{self.namespace}:attempts:{message_id}"
