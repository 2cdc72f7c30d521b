"""Every Redis key the store uses, written down once.

All keys start with the namespace, so several Drover installations (or test runs) can
share one Redis. The parts after it are release ids, environment and service names that
the contract already holds to patterns without ``:``, so keys cannot run into each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    namespace: str

    # --- one release ---------------------------------------------------------------------

    def release(self, release_id: str) -> str:
        # HASH: "state" -> ReleaseState JSON, "revision" -> int bumped by every state commit
        return f"{self.namespace}:release:{release_id}"

    def seen(self, release_id: str) -> str:
        # SET: ids of messages committed for this release, and of the messages it sent
        return f"{self.namespace}:release:{release_id}:seen"

    def timeline(self, release_id: str) -> str:
        # LIST: the release's Envelope JSON, oldest first, in commit order
        return f"{self.namespace}:release:{release_id}:timeline"

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
    def dead_letters(self) -> str:
        # LIST: JSON {id, at, reason, raw (base64), source}, newest last
        return f"{self.namespace}:dead-letters"

    # --- the fleet -----------------------------------------------------------------------

    def host_versions(self, environment: str, service: str) -> str:
        # HASH: host -> the version Drover last recorded for it
        return f"{self.namespace}:hosts:{environment}:{service}"
