"""The envelope around every payload, and the one way bytes off the bus become a message.

Also the registry of message types and the JSON Schema export, so services in other
languages can publish.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Self, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    computed_field,
)

from orchestrator.contract.base import Payload, Problem
from orchestrator.contract.commands import (
    AbortRelease,
    ApproveRelease,
    CheckDeadlines,
    DeployComponent,
    PauseRelease,
    RejectRelease,
    ResumeRelease,
    RetryRelease,
    RollbackComponent,
    StartRelease,
    SubmitRelease,
    ToggleFlag,
)
from orchestrator.contract.events import (
    ApprovalRefused,
    ApprovalRequested,
    ComponentDeployed,
    ComponentFailed,
    ComponentHeld,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    FlagToggled,
    FlagToggleFailed,
    GateJudged,
    HostDrained,
    ReleaseAccepted,
    ReleaseApproved,
    ReleaseFailed,
    ReleasePaused,
    ReleaseQueued,
    ReleaseRejected,
    ReleaseResumed,
    ReleaseRetried,
    ReleaseRolledBack,
    ReleaseSucceeded,
    StepFailed,
    StepStarted,
    StepSucceeded,
)

__all__ = [
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "Command",
    "Envelope",
    "Event",
    "Message",
    "MessageDecodeError",
    "decode",
    "decode_body",
    "derived_id",
    "encode_batch",
    "envelope",
    "json_schema",
    "problems_from",
    "random_id",
]

SCHEMA_VERSION: Final = 1

# The envelope's own fields, held to the same rules when a message is built as when it is
# read, so Drover never sends what it would itself refuse.
_MessageId = Annotated[str, Field(min_length=1, max_length=100)]
_ReleaseId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
_Actor = Annotated[str, Field(min_length=1, max_length=200)]

Command = (
    SubmitRelease
    | AbortRelease
    | ApproveRelease
    | RejectRelease
    | PauseRelease
    | ResumeRelease
    | RetryRelease
    | StartRelease
    | CheckDeadlines
    | DeployComponent
    | RollbackComponent
    | ToggleFlag
)
Event = (
    ReleaseAccepted
    | ReleaseRejected
    | ReleaseQueued
    | ApprovalRequested
    | ReleaseApproved
    | ApprovalRefused
    | ReleasePaused
    | ReleaseResumed
    | ReleaseRetried
    | DeadlinePassed
    | ComponentStarted
    | ComponentWaiting
    | ComponentHeld
    | StepStarted
    | StepSucceeded
    | StepFailed
    | HostDrained
    | GateJudged
    | ComponentDeployed
    | ComponentFailed
    | ComponentRolledBack
    | ComponentRollbackFailed
    | FlagToggled
    | FlagToggleFailed
    | ReleaseSucceeded
    | ReleaseRolledBack
    | ReleaseFailed
)
Message = Command | Event

_COMMANDS: Final[tuple[type[Payload], ...]] = (
    SubmitRelease,
    AbortRelease,
    ApproveRelease,
    RejectRelease,
    PauseRelease,
    ResumeRelease,
    RetryRelease,
    StartRelease,
    CheckDeadlines,
    DeployComponent,
    RollbackComponent,
    ToggleFlag,
)
_EVENTS: Final[tuple[type[Payload], ...]] = (
    ReleaseAccepted,
    ReleaseRejected,
    ReleaseQueued,
    ApprovalRequested,
    ReleaseApproved,
    ApprovalRefused,
    ReleasePaused,
    ReleaseResumed,
    ReleaseRetried,
    DeadlinePassed,
    ComponentStarted,
    ComponentWaiting,
    ComponentHeld,
    StepStarted,
    StepSucceeded,
    StepFailed,
    HostDrained,
    GateJudged,
    ComponentDeployed,
    ComponentFailed,
    ComponentRolledBack,
    ComponentRollbackFailed,
    FlagToggled,
    FlagToggleFailed,
    ReleaseSucceeded,
    ReleaseRolledBack,
    ReleaseFailed,
)
MESSAGE_TYPES: Final[dict[str, type[Payload]]] = {c.__name__: c for c in _COMMANDS + _EVENTS}
# A payload is one of these exactly (validated by its type's name): looked up by its type,
# not asked of pydantic's isinstance, which costs a call per class.
_COMMAND_TYPES: Final[frozenset[type[Payload]]] = frozenset(_COMMANDS)


def _payload_type(value: Any) -> str | None:
    return type(value).__name__ if isinstance(value, Payload) else None


# An envelope is built around a payload already made and checked, so its field is chosen
# by the payload's type at once: pydantic would otherwise try the union's 39 members one
# after another, for every message made (a third of the time it takes to make one).
if TYPE_CHECKING:
    _TypedPayload = Message
else:
    _TypedPayload = Annotated[
        Union[tuple(Annotated[kind, Tag(name)] for name, kind in MESSAGE_TYPES.items())],  # noqa: UP007
        Discriminator(_payload_type),
    ]


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
    payload: _TypedPayload

    @computed_field  # type: ignore[prop-decorator]
    @property
    def type(self) -> str:
        return type(self.payload).__name__

    @property
    def is_command(self) -> bool:
        return type(self.payload) in _COMMAND_TYPES

    def encode(self) -> bytes:
        return self._encoded

    # A message never changes once made, and most are written twice (to the store, then
    # to the bus): its bytes are made once, by the model's serializer itself, which
    # model_dump_json calls after sorting out options a message never sets.
    @functools.cached_property
    def _encoded(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_encoded", None)  # the bytes of the message copied, not the copy
        return copied

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
        id=message_id or random_id(),
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
    messages with the same ids, which every consumer recognises as already seen. It is
    ``uuid5(NAMESPACE_OID, f"{cause}/{purpose}").hex``, as it always was: a worker of
    another version, carrying on a command, must derive the ids this one derived.
    """
    digest = hashlib.sha1(_OID_NAMESPACE + f"{cause}/{purpose}".encode()).digest()
    return _uuid_hex(digest, version=5)


def random_id() -> str:
    """A fresh id: ``uuid4().hex``, made without the ``UUID`` object the uuid module
    builds for each (most messages are made with one: a third of what making one cost)."""
    return _uuid_hex(os.urandom(16), version=4)


_OID_NAMESPACE: Final = uuid.NAMESPACE_OID.bytes
_VERSION_AND_VARIANT: Final = (0xF000 << 64) | (0xC000 << 48)


def _uuid_hex(raw: bytes, *, version: int) -> str:
    """The hex of the UUID of the given version made of ``raw``'s first 16 bytes, as
    ``uuid.UUID(bytes=raw[:16], version=version).hex`` writes it (RFC 4122's variant)."""
    number = int.from_bytes(raw[:16]) & ~_VERSION_AND_VARIANT
    return f"{number | version << 76 | 0x8000 << 48:032x}"


def encode_batch(messages: Sequence[Envelope]) -> bytes:
    """Several events of one release as one body: a JSON array, in the order they were made.

    A worker sends the reports it makes between two effects together (see
    ``workers.progress``): one message on the bus instead of one each.
    """
    if not messages or len({m.release_id for m in messages}) != 1:
        raise ValueError("a batch holds one or more messages of one release")
    return b"[" + b",".join(m.encode() for m in messages) + b"]"


def decode_body(body: bytes | str) -> list[Envelope]:
    """Read a body off the wire: one message, or a batch (:func:`encode_batch`).

    Raises :class:`MessageDecodeError` if the body, or any message of a batch, is not a
    valid message; its ``raw`` is then the whole body, so that nothing of it is lost.
    """
    # A client library may hand the body over decoded (kombu over AMQP, for one).
    raw = body if isinstance(body, bytes) else body.encode()
    data = _json(raw)
    if not isinstance(data, list):
        return [_from_data(data, raw)]
    if not data:
        raise MessageDecodeError(raw, [Problem(path="", reason="an empty batch")])
    messages = []
    for index, item in enumerate(data):
        try:
            messages.append(_from_data(item, raw))
        except MessageDecodeError as error:
            problems = [
                Problem(path=f"[{index}].{p.path}".rstrip("."), reason=p.reason)
                for p in error.problems
            ]
            raise MessageDecodeError(raw, problems) from error
    if len({m.release_id for m in messages}) != 1:
        problem = Problem(path="", reason="a batch holds messages of more than one release")
        raise MessageDecodeError(raw, [problem])
    return messages


def decode(raw: bytes | str | Mapping[str, Any]) -> Envelope:
    """Read a message off the wire, or raise :class:`MessageDecodeError` saying why not."""
    if isinstance(raw, Mapping):
        return _from_data(raw, json.dumps(raw, default=str).encode())
    raw_bytes = raw if isinstance(raw, bytes) else raw.encode()
    return _from_data(_json(raw_bytes), raw_bytes)


def _json(raw_bytes: bytes) -> Any:
    try:
        return json.loads(raw_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = Problem(path="", reason=f"not JSON: {exc}")
        raise MessageDecodeError(raw_bytes, [problem]) from exc
    except RecursionError as exc:
        problem = Problem(path="", reason="JSON nested too deeply")
        raise MessageDecodeError(raw_bytes, [problem]) from exc


def _from_data(data: Any, raw_bytes: bytes) -> Envelope:
    """The message ``data`` (parsed JSON) holds; ``raw_bytes`` is what it came in."""
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
        path = _path(item["loc"], prefix)
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
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            context = item.get("ctx", {})
            field = context.get("discriminator", "kind").strip("'")
            path = f"{path}.{field}" if path else field
            given = context.get("tag")
            reason = (
                f"unknown {field} {given!r}; expected one of {context.get('expected_tags')}"
                if given is not None
                else "Field required"
            )
        if "[key]" in item["loc"]:
            reason = f"key: {reason}"
        problems.append(Problem(path=path, reason=reason))
    return problems


# Where a file holds a choice of kinds ("driver: {kind: shell, ...}"), pydantic puts the
# kind chosen into an error's location (driver.shell.timeout_s); the file has no such
# level, so it is left out. The fields (and the lists and maps) that hold such choices:
_CHOICE_FIELDS: Final = frozenset({"driver", "strategy"})
_CHOICE_COLLECTIONS: Final = frozenset({"checks", "metrics"})
_KINDS: Final = frozenset(
    {"simulated", "shell", "http", "rolling", "canary", "blue_green", "command", "graphite"}
)


def _path(loc: Sequence[int | str], prefix: str) -> str:
    path = prefix
    for index, part in enumerate(loc):
        if part == "[key]":  # pydantic's marker for a mapping key that is itself wrong
            continue
        if part in _KINDS and (
            (index >= 1 and loc[index - 1] in _CHOICE_FIELDS)
            or (index >= 2 and loc[index - 2] in _CHOICE_COLLECTIONS)
        ):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


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
