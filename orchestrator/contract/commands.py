"""Commands: imperative, each with exactly one consumer (the coordinator or a worker)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, ValidationInfo, field_validator, model_validator

from orchestrator.contract.base import ComponentName, Payload
from orchestrator.fleet.strategies import Strategy
from orchestrator.vocabulary import HostName, Name, Version

__all__ = [
    "AbortRelease",
    "ApproveRelease",
    "CheckDeadlines",
    "ComponentRequest",
    "DeployComponent",
    "PauseRelease",
    "RejectRelease",
    "ResumeRelease",
    "RetryRelease",
    "RollbackComponent",
    "StartRelease",
    "SubmitRelease",
    "ToggleFlag",
]

_Reason = Field(default="", max_length=500)


class ComponentRequest(Payload):
    """One service to move to a version, or one of its feature flags to turn on or off.

    A flag flip lets a release deploy dark: the code goes out with the flag off, and a
    later component (``depends_on`` the deploy) turns it on.
    """

    service: Name
    flag: Name | None = None
    enabled: bool = True  # for a flag: what to turn it to
    # Checked even when left out (validate_default), after ``flag``: one of the two is given.
    version: Version | None = Field(default=None, validate_default=True)
    depends_on: tuple[ComponentName, ...] = ()
    strategy: Strategy | None = None  # instead of the fleet file's, for this release only
    requires_approval: bool = False  # a human approves before it starts

    @field_validator("version")
    @classmethod
    def _deploy_or_flag(cls, version: str | None, info: ValidationInfo) -> str | None:
        flag = info.data.get("flag")
        if version is None and flag is None and "flag" in info.data:
            raise ValueError("Field required (or a flag, for a flag flip)")
        if version is not None and flag is not None:
            raise ValueError("a component has a version (a deploy) or a flag (a flip), not both")
        return version

    @model_validator(mode="after")
    def _flip_moves_no_hosts(self) -> ComponentRequest:
        if self.flag is not None and self.strategy is not None:
            raise ValueError("a flag flip has no strategy: it moves no hosts")
        return self

    @property
    def name(self) -> str:
        return self.service if self.flag is None else f"{self.service}.{self.flag}"


class SubmitRelease(Payload):
    """Release these versions of these services to one environment."""

    environment: Name
    reason: str = _Reason
    components: tuple[ComponentRequest, ...]
    requires_approval: bool = False  # a human approves before anything starts

    @field_validator("components")
    @classmethod
    def _not_empty(cls, components: tuple[ComponentRequest, ...]) -> tuple[ComponentRequest, ...]:
        # A check after the items are valid, so that a bad item is not also reported as
        # "too few items" (which is what a length constraint on the field would do).
        if not components:
            raise ValueError("a release needs at least one component")
        return components


class DeployComponent(Payload):
    """Move every host of one service in one environment to a version."""

    environment: Name
    service: Name
    version: Version
    strategy: Strategy | None = None  # the release's own; None: the fleet file's
    attempt: int = Field(default=1, ge=1)  # a retried release starts a new attempt


class RollbackComponent(Payload):
    """Put every host of one service back to the version it ran before the release."""

    environment: Name
    service: Name
    from_version: Version
    to_versions: dict[HostName, Version]
    strategy: Strategy | None = None
    attempt: int = Field(default=1, ge=1)


class ToggleFlag(Payload):
    """Turn one feature flag of a service on or off; ``undo`` when it compensates."""

    environment: Name
    service: Name
    flag: Name
    enabled: bool
    undo: bool = False
    attempt: int = Field(default=1, ge=1)


class AbortRelease(Payload):
    """Stop starting anything new and put back what was done; the envelope's actor aborts."""

    reason: str = _Reason


class ApproveRelease(Payload):
    """Let go on what waits for a human: the release, a component, or an inconclusive canary.

    Without ``component``, everything the release waits for is approved.
    """

    component: ComponentName | None = None
    comment: str = _Reason


class RejectRelease(Payload):
    """Say no to what waits for approval: the release ends, and what was done is put back."""

    reason: str = _Reason


class PauseRelease(Payload):
    """Start nothing new; workers stop between batches until the release is resumed."""

    reason: str = _Reason


class ResumeRelease(Payload):
    """Carry on a paused release."""


class RetryRelease(Payload):
    """Run a release that failed or was rolled back again, from where it stopped."""

    reason: str = _Reason


class StartRelease(Payload):
    """The coordinator's own: the release now holds the locks of all its services."""


class CheckDeadlines(Payload):
    """The coordinator's own: look at the release's deadlines as of ``now``.

    ``last_words`` says when the worker of each overdue component last reported on the
    command in flight, as the store has it: a worker's reports go to the store, not to
    the coordinator, and are read only when a deadline comes.
    """

    now: datetime
    last_words: dict[ComponentName, datetime] = Field(default_factory=dict)
