"""The message contract: every command and event Drover puts on the bus, and the envelope.

This is the only module that knows the wire format. Everything that crosses the bus is
one of the frozen payload models below, wrapped in an :class:`Envelope` and serialised
as JSON. Services in other languages publish by the JSON Schema that :func:`json_schema`
exports.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    computed_field,
    field_validator,
)

__all__ = [
    "SCHEMA_VERSION",
    "AbortRelease",
    "CheckDeadlines",
    "Command",
    "ComponentDeployed",
    "ComponentFailed",
    "ComponentRequest",
    "ComponentRollbackFailed",
    "ComponentRolledBack",
    "ComponentStarted",
    "ComponentWaiting",
    "DeadlinePassed",
    "DeployComponent",
    "Envelope",
    "Event",
    "HostName",
    "Message",
    "MessageDecodeError",
    "Name",
    "Problem",
    "ReleaseAccepted",
    "ReleaseFailed",
    "ReleaseQueued",
    "ReleaseRejected",
    "ReleaseRolledBack",
    "ReleaseSucceeded",
    "RollbackComponent",
    "StartRelease",
    "Step",
    "StepFailed",
    "StepStarted",
    "StepSucceeded",
    "SubmitRelease",
    "Version",
    "decode",
    "derived_id",
    "envelope",
    "json_schema",
    "problems_from",
]

SCHEMA_VERSION: Final = 1

# Names end up in queue names, store keys, metric names and (issue 4) driver arguments,
# so they are held to strict patterns here, once, rather than escaped everywhere later.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
HostVersions = Mapping[HostName, Version]

# The envelope's own fields, held to the same rules when a message is built as when it is
# read, so Drover never sends what it would itself refuse.
_MessageId = Annotated[str, Field(min_length=1, max_length=100)]
_ReleaseId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
_Actor = Annotated[str, Field(min_length=1, max_length=200)]


class Step(StrEnum):
    """What a worker does to one batch of hosts, in this order."""

    DRAIN = "drain"
    DEPLOY = "deploy"
    VERIFY = "verify"
    UNDRAIN = "undrain"


class Problem(BaseModel):
    """One reason an input was refused: where (a dotted field path) and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- commands: imperative, each has exactly one consumer ---------------------------------


class ComponentRequest(_Payload):
    """One service to move to one version, after the services it depends on."""

    service: Name
    version: Version
    depends_on: tuple[Name, ...] = ()


class SubmitRelease(_Payload):
    """Release these versions of these services to one environment."""

    environment: Name
    reason: str = Field(default="", max_length=500)
    components: tuple[ComponentRequest, ...]

    @field_validator("components")
    @classmethod
    def _not_empty(cls, components: tuple[ComponentRequest, ...]) -> tuple[ComponentRequest, ...]:
        # A check after the items are valid, so that a bad item is not also reported as
        # "too few items" (which is what a length constraint on the field would do).
        if not components:
            raise ValueError("a release needs at least one component")
        return components


class DeployComponent(_Payload):
    """Move every host of one service in one environment to a version."""

    environment: Name
    service: Name
    version: Version


class RollbackComponent(_Payload):
    """Put every host of one service back to the version it ran before the release."""

    environment: Name
    service: Name
    from_version: Version
    to_versions: dict[HostName, Version]


class AbortRelease(_Payload):
    """Stop starting anything new and put back what was done; the envelope's actor aborts."""

    reason: str = Field(default="", max_length=500)


class StartRelease(_Payload):
    """The coordinator's own: the release now holds the locks of all its services."""


class CheckDeadlines(_Payload):
    """The coordinator's own: look at the release's deadlines as of ``now``."""

    now: datetime


# --- events: past tense, anyone may listen ----------------------------------------------


class ReleaseAccepted(_Payload):
    environment: Name
    reason: str
    components: tuple[ComponentRequest, ...]


class ReleaseRejected(_Payload):
    problems: tuple[Problem, ...]


class ReleaseQueued(_Payload):
    """The release waits for these releases, which hold services it needs."""

    behind: tuple[str, ...]


class DeadlinePassed(_Payload):
    """A component did not report in time; whatever it says later is ignored."""

    environment: Name
    service: Name
    deadline: datetime
    waited_for: str  # what the coordinator was waiting for, in words


class ComponentStarted(_Payload):
    """A worker took a component on; ``previous_versions`` is what its hosts ran before."""

    environment: Name
    service: Name
    version: Version
    previous_versions: dict[HostName, Version]


class ComponentWaiting(_Payload):
    """A worker has the command but waits for the one still holding the component."""

    environment: Name
    service: Name
    holder: str


class _StepReport(_Payload):
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


class StepFailed(_StepReport):
    host: HostName
    reason: str


class ComponentDeployed(_Payload):
    environment: Name
    service: Name
    version: Version
    previous_versions: dict[HostName, Version]


class ComponentFailed(_Payload):
    """A component could not be deployed; its worker already put its own hosts back."""

    environment: Name
    service: Name
    version: Version
    reason: str
    restored: bool


class ComponentRolledBack(_Payload):
    environment: Name
    service: Name
    to_versions: dict[HostName, Version]


class ComponentRollbackFailed(_Payload):
    environment: Name
    service: Name
    reason: str
    hosts: tuple[HostName, ...]


class ReleaseSucceeded(_Payload):
    pass


class ReleaseRolledBack(_Payload):
    reason: str


class ReleaseFailed(_Payload):
    """Compensation could not finish: what is named here needs a human."""

    reason: str
    needs_attention: tuple[str, ...]


Command = (
    SubmitRelease
    | AbortRelease
    | StartRelease
    | CheckDeadlines
    | DeployComponent
    | RollbackComponent
)
Event = (
    ReleaseAccepted
    | ReleaseRejected
    | ReleaseQueued
    | DeadlinePassed
    | ComponentStarted
    | ComponentWaiting
    | StepStarted
    | StepSucceeded
    | StepFailed
    | ComponentDeployed
    | ComponentFailed
    | ComponentRolledBack
    | ComponentRollbackFailed
    | ReleaseSucceeded
    | ReleaseRolledBack
    | ReleaseFailed
)
Message = Command | Event

_COMMANDS: Final[tuple[type[_Payload], ...]] = (
    SubmitRelease,
    AbortRelease,
    StartRelease,
    CheckDeadlines,
    DeployComponent,
    RollbackComponent,
)
_EVENTS: Final[tuple[type[_Payload], ...]] = (
    ReleaseAccepted,
    ReleaseRejected,
    ReleaseQueued,
    DeadlinePassed,
    ComponentStarted,
    ComponentWaiting,
    StepStarted,
    StepSucceeded,
    StepFailed,
    ComponentDeployed,
    ComponentFailed,
    ComponentRolledBack,
    ComponentRollbackFailed,
    ReleaseSucceeded,
    ReleaseRolledBack,
    ReleaseFailed,
)
MESSAGE_TYPES: Final[dict[str, type[_Payload]]] = {c.__name__: c for c in _COMMANDS + _EVENTS}


class _Header(BaseModel):
    """The envelope as it is read off the wire, before its payload is trusted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: _MessageId
    type: str
    schema_version: int
    occurred_at: datetime
    release_id: _ReleaseId
    causation_id: str | None = None
    actor: _Actor
    payload: dict[str, Any]


class Envelope(BaseModel):
    """One message on the bus: a payload and the facts every consumer needs about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: _MessageId
    schema_version: int = SCHEMA_VERSION
    occurred_at: datetime
    release_id: _ReleaseId
    causation_id: str | None = None
    actor: _Actor
    payload: Message

    @computed_field  # type: ignore[prop-decorator]
    @property
    def type(self) -> str:
        return type(self.payload).__name__

    @property
    def is_command(self) -> bool:
        return isinstance(self.payload, _COMMANDS)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, for transports (Celery task arguments) that serialise it."""
        return self.model_dump(mode="json")


class MessageDecodeError(Exception):
    """Bytes off the bus that are not a valid Drover message.

    ``header`` is set when the envelope itself was readable and only the payload was not,
    so a consumer can still answer the sender (a rejected release) instead of only
    dead-lettering the bytes.
    """

    def __init__(self, raw: bytes, problems: Sequence[Problem], header: _Header | None = None):
        self.raw = raw
        self.problems = tuple(problems)
        self.header = header
        super().__init__("; ".join(str(p) for p in self.problems))


def envelope(
    payload: Message,
    *,
    release_id: str,
    actor: str,
    causation: Envelope | None = None,
    message_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap a payload for the bus; the one way Drover code builds a message."""
    return Envelope(
        id=message_id or uuid.uuid4().hex,
        occurred_at=occurred_at or datetime.now(UTC),
        release_id=release_id,
        causation_id=causation.id if causation else None,
        actor=actor,
        payload=payload,
    )


_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def derived_id(cause: str, purpose: str | int) -> str:
    """A message id that is the same whenever the same cause leads to the same purpose.

    Deciding or doing the same thing twice (after a crash, on a redelivery) then yields
    messages with the same ids, which every consumer recognises as already seen.
    """
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{cause}/{purpose}").hex


def decode(raw: bytes | str | Mapping[str, Any]) -> Envelope:
    """Read a message off the wire, or raise :class:`MessageDecodeError` saying why not."""
    data: Any
    if isinstance(raw, Mapping):
        data, raw_bytes = raw, json.dumps(raw, default=str).encode()
    else:
        raw_bytes = raw if isinstance(raw, bytes) else raw.encode()
        try:
            data = json.loads(raw_bytes)
        except (ValueError, UnicodeDecodeError) as exc:
            problem = Problem(path="", reason=f"not JSON: {exc}")
            raise MessageDecodeError(raw_bytes, [problem]) from exc
        except RecursionError as exc:
            problem = Problem(path="", reason="JSON nested too deeply")
            raise MessageDecodeError(raw_bytes, [problem]) from exc
    try:
        header = _Header.model_validate(data)
    except ValidationError as exc:
        raise MessageDecodeError(raw_bytes, problems_from(exc)) from exc
    payload_type = MESSAGE_TYPES.get(header.type)
    if payload_type is None:
        problem = Problem(path="type", reason=f"unknown message type {header.type!r}")
        raise MessageDecodeError(raw_bytes, [problem], header)
    if header.schema_version != SCHEMA_VERSION:
        reason = f"schema version {header.schema_version} is not {SCHEMA_VERSION}"
        raise MessageDecodeError(raw_bytes, [Problem(path="schema_version", reason=reason)], header)
    try:
        payload = payload_type.model_validate(header.payload)
    except ValidationError as exc:
        raise MessageDecodeError(raw_bytes, problems_from(exc, prefix="payload"), header) from exc
    fields = header.model_dump(exclude={"type", "payload"})
    message = Envelope(**fields, payload=payload)
    try:
        # JSON may carry a lone surrogate ("\ud800"), which no UTF-8 can hold: a message
        # Drover could read but never write again (to its timeline, say) is refused here.
        # Only a \uD8xx-\uDFxx escape can bring one, so only such messages are written
        # out to check: decoding stays one pass on the hot path.
        if _SURROGATE_ESCAPE.search(raw_bytes):
            message.encode()
    except ValueError as exc:
        problem = Problem(path="", reason="text that is not valid Unicode (a lone surrogate)")
        raise MessageDecodeError(raw_bytes, [problem], header) from exc
    return message


def problems_from(error: ValidationError, prefix: str = "") -> list[Problem]:
    """Turn pydantic's errors into paths a person can find in their file."""
    problems = []
    for item in error.errors(include_url=False):
        path = prefix
        for part in item["loc"]:
            if part == "[key]":  # pydantic's marker for a mapping key that is itself wrong
                continue
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown field"
        elif item["type"] == "string_pattern_mismatch":
            reason = f"{item['input']!r} is not valid here ({item['msg']})"
        elif item["type"] == "value_error":
            reason = str(item.get("ctx", {}).get("error", reason))  # without "Value error, "
        elif item["type"] == "string_type" and isinstance(item["input"], int | float):
            # YAML reads 2.10 as the number 2.1: the digits the user wrote are already lost,
            # so they are refused rather than turned back into a (wrong) string.
            reason = f"{reason}; this was read as the number {item['input']!r}: put it in quotes"
        if "[key]" in item["loc"]:
            reason = f"key: {reason}"
        problems.append(Problem(path=path, reason=reason))
    return problems


def json_schema() -> dict[str, Any]:
    """A JSON Schema per message type: the envelope with that type's payload."""
    header = _Header.model_json_schema()
    schemas: dict[str, Any] = {}
    for name, payload_type in MESSAGE_TYPES.items():
        properties = dict(header["properties"])
        properties["type"] = {"const": name, "title": "Type"}
        properties["schema_version"] = {"const": SCHEMA_VERSION, "title": "Schema Version"}
        payload = payload_type.model_json_schema()
        # Nested models are "$ref": "#/$defs/..."; a ref resolves against the document
        # root, so their definitions must live there, not under the payload.
        definitions = payload.pop("$defs", None)
        properties["payload"] = payload
        schemas[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": name,
            "description": (payload_type.__doc__ or "").strip(),
            "x-drover-kind": "command" if payload_type in _COMMANDS else "event",
            "type": "object",
            "properties": properties,
            "required": header["required"],
            "additionalProperties": False,
            **({"$defs": definitions} if definitions else {}),
        }
    return schemas
