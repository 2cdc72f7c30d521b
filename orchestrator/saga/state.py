"""What the saga knows about a release: its status, its components, and the only moves
a component may make."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from pydantic import BaseModel, ConfigDict

from orchestrator.contract import ComponentRequest, Message
from orchestrator.fleet.strategies import Strategy

if TYPE_CHECKING:
    from orchestrator.saga.index import ComponentIndex

__all__ = [
    "COMPONENT_TRANSITIONS",
    "ComponentState",
    "ComponentStatus",
    "Decision",
    "IllegalTransition",
    "ReleaseState",
    "ReleaseStatus",
]


class ReleaseStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # a human must approve before it may start
    QUEUED = "queued"  # waiting for releases that hold its services
    RUNNING = "running"
    PAUSED = "paused"  # by a human, or held by an inconclusive analysis: nothing new starts
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # a compensation could not be done: a human is needed
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RELEASE


_TERMINAL_RELEASE: Final = frozenset(
    {
        ReleaseStatus.SUCCEEDED,
        ReleaseStatus.ROLLED_BACK,
        ReleaseStatus.FAILED,
        ReleaseStatus.REJECTED,
    }
)


class ComponentStatus(StrEnum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"  # ready to start, but a human must say so
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"  # its worker reported failure (and put its own hosts back)
    TIMED_OUT = "timed_out"  # no word from its worker in time: it is put back like a deployed one
    SKIPPED = "skipped"  # never started: the release failed first
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


# The only moves a component may make; anything else is a duplicate or late message.
# The moves back to pending are a retry's, which a human asks for.
_RETRIED: Final = frozenset({ComponentStatus.PENDING})
COMPONENT_TRANSITIONS: Final[Mapping[ComponentStatus, frozenset[ComponentStatus]]] = {
    ComponentStatus.PENDING: frozenset(
        {ComponentStatus.DEPLOYING, ComponentStatus.AWAITING_APPROVAL, ComponentStatus.SKIPPED}
    ),
    ComponentStatus.AWAITING_APPROVAL: frozenset(
        {ComponentStatus.DEPLOYING, ComponentStatus.SKIPPED}
    ),
    ComponentStatus.DEPLOYING: frozenset(
        {ComponentStatus.DEPLOYED, ComponentStatus.FAILED, ComponentStatus.TIMED_OUT}
    ),
    ComponentStatus.DEPLOYED: frozenset({ComponentStatus.ROLLING_BACK}),
    ComponentStatus.TIMED_OUT: frozenset({ComponentStatus.ROLLING_BACK}),
    ComponentStatus.ROLLING_BACK: frozenset(
        {ComponentStatus.ROLLED_BACK, ComponentStatus.ROLLBACK_FAILED}
    ),
    ComponentStatus.FAILED: _RETRIED,
    ComponentStatus.SKIPPED: _RETRIED,
    ComponentStatus.ROLLED_BACK: _RETRIED,
    ComponentStatus.ROLLBACK_FAILED: _RETRIED,
}


class IllegalTransition(Exception):
    def __init__(self, name: str, current: ComponentStatus, wanted: ComponentStatus):
        super().__init__(f"{name}: {current} -> {wanted} is not allowed")


class ComponentState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    version: str | None = None  # a deploy's target
    flag: str | None = None  # a flag flip's flag, turned to ``enabled``
    enabled: bool = True
    depends_on: tuple[str, ...] = ()
    strategy: Strategy | None = None  # the release's own, if it gave one
    requires_approval: bool = False
    status: ComponentStatus = ComponentStatus.PENDING
    previous_versions: dict[str, str] = {}
    restored: bool = True  # for a FAILED component: did its worker put its hosts back?
    reason: str = ""
    # When the coordinator gives up waiting for the worker (set while it is sent and
    # working, and the release is not paused): a report after it is ignored.
    deadline: datetime | None = None
    sent_at: datetime | None = None
    resends: int = 0  # times the command in flight was sent again for want of an answer
    attempt: int = 1  # which run of the release this component's work belongs to
    held: str = ""  # the worker's stop that waits for a human (see ComponentHeld)
    approved: tuple[str, ...] = ()  # approvals given: "start", and holds by name

    @property
    def name(self) -> str:
        return self.service if self.flag is None else f"{self.service}.{self.flag}"

    @property
    def target(self) -> str:
        """What this component moves to, in words: a version, or a flag's new state."""
        if self.flag is not None:
            return f"{self.flag} {'on' if self.enabled else 'off'}"
        return self.version or "?"

    @property
    def previous_version(self) -> str | None:
        """The version the hosts ran before, when they all ran the same one."""
        versions = set(self.previous_versions.values())
        return versions.pop() if len(versions) == 1 else None

    @classmethod
    def requested(cls, request: ComponentRequest) -> ComponentState:
        return cls(
            service=request.service,
            version=request.version,
            flag=request.flag,
            enabled=request.enabled,
            depends_on=request.depends_on,
            strategy=request.strategy,
            requires_approval=request.requires_approval,
        )

    def moved_to(self, status: ComponentStatus, **changes: object) -> ComponentState:
        if status not in COMPONENT_TRANSITIONS[self.status]:
            raise IllegalTransition(self.name, self.status, status)
        return self.model_copy(update={"status": status, **changes})


class ReleaseState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    environment: str
    reason: str = ""
    requested_by: str
    status: ReleaseStatus
    components: dict[str, ComponentState] = {}  # by component name
    failure: str = ""  # the first thing that went wrong, in words
    aborted_by: str | None = None
    approved_by: str | None = None  # who let the release start, when it needed that
    paused_by: str | None = None
    attempt: int = 1
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @functools.cached_property
    def index(self) -> ComponentIndex:
        """The components grouped as the saga asks about them after every event, shared
        by this state and every copy made of it (pydantic copies it along; it is not a
        field: neither compared nor stored). Ask it about the copy's own components."""
        from orchestrator.saga.index import ComponentIndex  # it groups this module's types

        return ComponentIndex(self.components)

    @property
    def next_deadline(self) -> datetime | None:
        """The earliest moment a component in flight must have reported by."""
        return self.index.next_deadline(self.components)

    @property
    def waiting_for_approval(self) -> list[str]:
        """What a human's approval would let go on, in words."""
        if self.status is ReleaseStatus.AWAITING_APPROVAL:
            return ["the release"]
        return [
            f"{c.name} ({'to start' if c.held == '' else 'after ' + c.held})"
            for c in self.components.values()
            if c.status is ComponentStatus.AWAITING_APPROVAL or c.held
        ]

    def services(self) -> list[str]:
        return sorted({c.service for c in self.components.values()})


@dataclass(frozen=True)
class Decision:
    state: ReleaseState | None
    outgoing: tuple[Message, ...] = field(default=())
