"""Events: past tense, anyone may listen (the coordinator, `drover watch`, dashboards)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from orchestrator.contract.base import ComponentName, Payload, Problem
from orchestrator.contract.commands import ComponentRequest
from orchestrator.vocabulary import HostName, Name, Step, Version

__all__ = [
    "ApprovalRefused",
    "ApprovalRequested",
    "ComponentDeployed",
    "ComponentFailed",
    "ComponentHeld",
    "ComponentRollbackFailed",
    "ComponentRolledBack",
    "ComponentStarted",
    "ComponentWaiting",
    "DeadlinePassed",
    "FlagToggleFailed",
    "FlagToggled",
    "GateJudged",
    "HostDrained",
    "ReleaseAccepted",
    "ReleaseApproved",
    "ReleaseFailed",
    "ReleasePaused",
    "ReleaseQueued",
    "ReleaseRejected",
    "ReleaseResumed",
    "ReleaseRetried",
    "ReleaseRolledBack",
    "ReleaseSucceeded",
    "StepFailed",
    "StepStarted",
    "StepSucceeded",
]

_OUTPUT_LIMIT = 8000  # characters of a command's or an API's output kept in the timeline


class ReleaseAccepted(Payload):
    environment: Name
    reason: str
    components: tuple[ComponentRequest, ...]


class ReleaseRejected(Payload):
    problems: tuple[Problem, ...]


class ReleaseQueued(Payload):
    """The release waits for these releases, which hold services it needs."""

    behind: tuple[str, ...]


class ApprovalRequested(Payload):
    """The release waits for a human: ``component`` is None for the release as a whole."""

    component: ComponentName | None = None
    reason: str


class ReleaseApproved(Payload):
    """The envelope's actor approved; ``approved`` says what went on because of it."""

    approved: tuple[str, ...]
    comment: str = ""


class ApprovalRefused(Payload):
    """An approval (or another human command) that was not taken, and why."""

    command: str
    reason: str


class ReleasePaused(Payload):
    reason: str


class ReleaseResumed(Payload):
    pass


class ReleaseRetried(Payload):
    attempt: int = Field(ge=2)
    components: tuple[ComponentName, ...]  # what runs again


class DeadlinePassed(Payload):
    """A component did not report in time; whatever it says later is ignored."""

    environment: Name
    service: Name
    deadline: datetime
    waited_for: str  # what the coordinator was waiting for, in words


class ComponentStarted(Payload):
    """A worker took a component on; ``previous_versions`` is what its hosts ran before."""

    environment: Name
    service: Name
    version: Version
    previous_versions: dict[HostName, Version]
    live_colour: Literal["blue", "green"] | None = None  # blue/green: what served before


class ComponentWaiting(Payload):
    """A worker has the command but waits for the one still holding the component."""

    environment: Name
    service: Name
    holder: str


class ComponentHeld(Payload):
    """A worker stopped for a human (an inconclusive analysis): approve or abort.

    ``hold`` names this stop; the worker goes on once the saga records it approved.
    """

    environment: Name
    service: Name
    hold: str
    reason: str


class _StepReport(Payload):
    environment: Name
    service: Name
    step: Step
    batch: int = Field(ge=1)
    hosts: tuple[HostName, ...]
    rollback: bool = False


class StepStarted(_StepReport):
    pass


class StepSucceeded(_StepReport):
    duration_ms: float = Field(ge=0, allow_inf_nan=False)  # JSON has no infinity
    output: str = Field(default="", max_length=_OUTPUT_LIMIT)


class StepFailed(_StepReport):
    host: HostName | Literal[""]  # "" for a step on the whole service
    reason: str
    output: str = Field(default="", max_length=_OUTPUT_LIMIT)


class HostDrained(Payload):
    """How a drain went: how long it waited for in-flight requests, and what was left."""

    environment: Name
    service: Name
    host: HostName
    waited_ms: float = Field(ge=0, allow_inf_nan=False)
    in_flight_left: int = Field(ge=0)
    timed_out: bool  # the drain timeout passed with requests still in flight


class GateJudged(Payload):
    """One metric gate's inputs, thresholds and verdict."""

    environment: Name
    service: Name
    step: Literal[Step.ANALYSE, Step.GATE]
    gate: Name
    verdict: Literal["pass", "inconclusive", "fail"]
    inputs: dict[str, float | int | None]
    thresholds: dict[str, float]
    reason: str


class ComponentDeployed(Payload):
    environment: Name
    service: Name
    version: Version
    previous_versions: dict[HostName, Version]


class ComponentFailed(Payload):
    """A component could not be deployed; its worker already put its own hosts back."""

    environment: Name
    service: Name
    version: Version
    reason: str
    restored: bool


class ComponentRolledBack(Payload):
    environment: Name
    service: Name
    to_versions: dict[HostName, Version]


class ComponentRollbackFailed(Payload):
    environment: Name
    service: Name
    reason: str
    hosts: tuple[HostName, ...]


class FlagToggled(Payload):
    environment: Name
    service: Name
    flag: Name
    enabled: bool
    previously: bool
    undo: bool = False


class FlagToggleFailed(Payload):
    environment: Name
    service: Name
    flag: Name
    reason: str
    undo: bool = False


class ReleaseSucceeded(Payload):
    pass


class ReleaseRolledBack(Payload):
    reason: str


class ReleaseFailed(Payload):
    """Compensation could not finish: what is named here needs a human."""

    reason: str
    needs_attention: tuple[str, ...]
