"""The wire contract: every message survives the bus, and whatever does not is explained."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from orchestrator.contract import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    AbortRelease,
    ApprovalRefused,
    ApprovalRequested,
    ApproveRelease,
    CheckDeadlines,
    ComponentDeployed,
    ComponentFailed,
    ComponentHeld,
    ComponentRequest,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    DeployComponent,
    Envelope,
    FlagToggled,
    FlagToggleFailed,
    GateJudged,
    HostDrained,
    Message,
    MessageDecodeError,
    PauseRelease,
    Problem,
    RejectRelease,
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
    ResumeRelease,
    RetryRelease,
    RollbackComponent,
    StartRelease,
    Step,
    StepFailed,
    StepStarted,
    StepSucceeded,
    ToggleFlag,
    decode,
    decode_body,
    encode_batch,
    envelope,
    json_schema,
    problems_from,
)
from tests.unit.builders import ACTOR, RELEASE_ID, T0, component, event, submit

HOSTS = ("web-1", "web-2")
BEFORE = {"web-1": "1.0.0", "web-2": "1.0.1"}

# One of each, with every optional field set away from its default where there is one.
SAMPLES: dict[str, Message] = {
    "SubmitRelease": submit(component("db"), component("api", "db"), reason="fees"),
    "DeployComponent": DeployComponent(environment="prod", service="api", version="2.0.0"),
    "RollbackComponent": RollbackComponent(
        environment="prod", service="api", from_version="2.0.0", to_versions=BEFORE
    ),
    "AbortRelease": AbortRelease(reason="wrong build"),
    "StartRelease": StartRelease(),
    "CheckDeadlines": CheckDeadlines(now=T0),
    "ReleaseAccepted": ReleaseAccepted(
        environment="prod", reason="fees", components=(component("api"),)
    ),
    "ReleaseRejected": ReleaseRejected(
        problems=(Problem(path="components[0].service", reason="unknown service"),)
    ),
    "ReleaseQueued": ReleaseQueued(behind=("R-0", "R-00")),
    "DeadlinePassed": DeadlinePassed(
        environment="prod", service="api", deadline=T0, waited_for="deploy of api"
    ),
    "ComponentStarted": ComponentStarted(
        environment="prod", service="api", version="2.0.0", previous_versions=BEFORE
    ),
    "ComponentWaiting": ComponentWaiting(environment="prod", service="api", holder="R-0"),
    "StepStarted": StepStarted(
        environment="prod", service="api", step=Step.DRAIN, batch=1, hosts=HOSTS
    ),
    "StepSucceeded": StepSucceeded(
        environment="prod",
        service="api",
        step=Step.VERIFY,
        batch=2,
        hosts=HOSTS,
        rollback=True,
        duration_ms=12.5,
    ),
    "StepFailed": StepFailed(
        environment="prod",
        service="api",
        step=Step.DEPLOY,
        batch=1,
        hosts=HOSTS,
        host="web-2",
        reason="exit 1",
    ),
    "ComponentDeployed": ComponentDeployed(
        environment="prod", service="api", version="2.0.0", previous_versions=BEFORE
    ),
    "ComponentFailed": ComponentFailed(
        environment="prod", service="api", version="2.0.0", reason="verify", restored=False
    ),
    "ComponentRolledBack": ComponentRolledBack(
        environment="prod", service="api", to_versions=BEFORE
    ),
    "ComponentRollbackFailed": ComponentRollbackFailed(
        environment="prod", service="api", reason="stuck", hosts=("web-2",)
    ),
    "ReleaseSucceeded": ReleaseSucceeded(),
    "ReleaseRolledBack": ReleaseRolledBack(reason="api: verify"),
    "ReleaseFailed": ReleaseFailed(reason="api: verify", needs_attention=("db: deployed",)),
    "ToggleFlag": ToggleFlag(environment="prod", service="api", flag="new-flow", enabled=True),
    "ApproveRelease": ApproveRelease(component="api", comment="looks good"),
    "RejectRelease": RejectRelease(reason="not today"),
    "PauseRelease": PauseRelease(reason="lunch"),
    "ResumeRelease": ResumeRelease(),
    "RetryRelease": RetryRelease(reason="db fixed"),
    "ApprovalRequested": ApprovalRequested(component="api", reason="needs a human"),
    "ReleaseApproved": ReleaseApproved(approved=("api",), comment="ok"),
    "ApprovalRefused": ApprovalRefused(command="ApproveRelease", reason="own release"),
    "ReleasePaused": ReleasePaused(reason="lunch"),
    "ReleaseResumed": ReleaseResumed(),
    "ReleaseRetried": ReleaseRetried(attempt=2, components=("api", "api.new-flow")),
    "ComponentHeld": ComponentHeld(
        environment="prod", service="api", hold="analysis-1", reason="inconclusive"
    ),
    "HostDrained": HostDrained(
        environment="prod",
        service="api",
        host="api-1",
        waited_ms=120.5,
        in_flight_left=0,
        timed_out=False,
    ),
    "GateJudged": GateJudged(
        environment="prod",
        service="api",
        step=Step.GATE,
        gate="checkouts",
        verdict="fail",
        inputs={"value": 0.0, "before": 120.0, "points": 30},
        thresholds={"min_ratio_to_before": 0.5},
        reason="checkouts fell to 0% of before",
    ),
    "FlagToggled": FlagToggled(
        environment="prod", service="api", flag="new-flow", enabled=True, previously=False
    ),
    "FlagToggleFailed": FlagToggleFailed(
        environment="prod", service="api", flag="new-flow", reason="flag service down"
    ),
}
COMMANDS = {
    "SubmitRelease",
    "AbortRelease",
    "ApproveRelease",
    "RejectRelease",
    "PauseRelease",
    "ResumeRelease",
    "RetryRelease",
    "StartRelease",
    "CheckDeadlines",
    "DeployComponent",
    "RollbackComponent",
    "ToggleFlag",
}


def wire(payload: Message, **changes: Any) -> dict[str, Any]:
    """A message as a sender in any language would put it on the bus, with ``changes``."""
    data = event(payload, message_id="m-1").to_wire()
    data.update(changes)
    return data


def decode_error(raw: bytes | str | dict[str, Any]) -> MessageDecodeError:
    with pytest.raises(MessageDecodeError) as caught:
        decode(raw)
    return caught.value


def test_there_is_a_sample_of_every_message_type() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    assert all(type(SAMPLES[name]) is MESSAGE_TYPES[name] for name in SAMPLES)


# --- encode and decode --------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_every_message_type_survives_encode_and_decode(name: str) -> None:
    sent = event(SAMPLES[name])

    received = decode(sent.encode())

    assert received == sent
    assert type(received.payload) is MESSAGE_TYPES[name]
    assert received.type == name


@pytest.mark.parametrize("name", SAMPLES)
def test_every_message_type_decodes_from_text_and_from_a_wire_dict(name: str) -> None:
    sent = event(SAMPLES[name])

    assert decode(sent.encode().decode()) == sent
    assert decode(sent.to_wire()) == sent


@pytest.mark.parametrize("name", SAMPLES)
def test_commands_and_events_are_told_apart(name: str) -> None:
    assert event(SAMPLES[name]).is_command is (name in COMMANDS)


def test_encoded_message_is_the_documented_envelope() -> None:
    sent = envelope(
        SAMPLES["DeployComponent"],
        release_id=RELEASE_ID,
        actor=ACTOR,
        message_id="m-7",
        occurred_at=T0,
    )

    assert json.loads(sent.encode()) == {
        "id": "m-7",
        "type": "DeployComponent",
        "schema_version": SCHEMA_VERSION,
        "occurred_at": "2024-05-01T12:00:00Z",
        "release_id": RELEASE_ID,
        "causation_id": None,
        "actor": ACTOR,
        "payload": {
            "environment": "prod",
            "service": "api",
            "version": "2.0.0",
            "strategy": None,
            "attempt": 1,
        },
    }


def test_a_copy_with_changes_is_encoded_as_changed() -> None:
    sent = envelope(SAMPLES["ReleaseSucceeded"], release_id=RELEASE_ID, actor=ACTOR)
    sent.encode()  # its bytes are kept once made

    copied = sent.model_copy(update={"actor": "someone-else"})

    assert decode(copied.encode()).actor == "someone-else"
    assert decode(sent.encode()).actor == ACTOR


def test_a_payload_that_is_not_a_message_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        envelope(HOSTS, release_id=RELEASE_ID, actor=ACTOR)  # type: ignore[arg-type]


def test_envelope_links_a_message_to_its_cause_and_fills_id_and_clock() -> None:
    cause = event(SAMPLES["SubmitRelease"], message_id="cause-1")
    before = datetime.now(UTC)

    first = envelope(SAMPLES["ReleaseSucceeded"], release_id="R-1", actor="c", causation=cause)
    second = envelope(SAMPLES["ReleaseSucceeded"], release_id="R-1", actor="c")

    assert first.causation_id == "cause-1"
    assert second.causation_id is None
    assert first.id != second.id
    assert before <= first.occurred_at <= datetime.now(UTC)


@pytest.mark.parametrize(
    "changes",
    [{"release_id": "no spaces allowed"}, {"actor": ""}, {"message_id": "x" * 101}],
    ids=["release id", "actor", "message id"],
)
def test_envelope_refuses_what_decode_would_refuse(changes: dict[str, str]) -> None:
    arguments: dict[str, Any] = {"release_id": RELEASE_ID, "actor": ACTOR, **changes}

    with pytest.raises(ValidationError):
        envelope(SAMPLES["ReleaseSucceeded"], **arguments)


def test_step_duration_must_be_a_finite_number() -> None:
    with pytest.raises(ValidationError):
        StepSucceeded(
            environment="prod",
            service="api",
            step=Step.DEPLOY,
            batch=1,
            hosts=HOSTS,
            duration_ms=float("inf"),
        )


def test_abort_reason_is_optional_and_bounded() -> None:
    assert AbortRelease().reason == ""
    with pytest.raises(ValidationError):
        AbortRelease(reason="x" * 501)


def test_who_aborts_is_the_envelope_actor_not_a_payload_field() -> None:
    data = wire(SAMPLES["AbortRelease"], actor="alice")
    data["payload"]["actor"] = "bob"

    error = decode_error(data)

    assert error.problems == (Problem(path="payload.actor", reason="unknown field"),)
    data["payload"].pop("actor")
    assert decode(data).actor == "alice"


def test_check_deadlines_needs_a_moment() -> None:
    data = wire(SAMPLES["CheckDeadlines"])
    data["payload"] = {}

    assert decode_error(data).problems == (Problem(path="payload.now", reason="Field required"),)


def test_payloads_are_frozen() -> None:
    payload = SAMPLES["DeployComponent"]
    assert isinstance(payload, DeployComponent)

    with pytest.raises(ValidationError):
        payload.version = "9.9.9"  # type: ignore[misc]


# --- what cannot be decoded ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b""], ids=["syntax", "utf8", "empty"])
def test_bytes_that_are_not_json_keep_the_raw_bytes_and_no_header(raw: bytes) -> None:
    error = decode_error(raw)

    assert error.raw == raw
    assert error.header is None
    (problem,) = error.problems
    assert problem.path == ""
    assert problem.reason.startswith("not JSON: ")


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"SubmitRelease"', b"42"])
def test_json_that_is_not_an_object_is_refused(raw: bytes) -> None:
    error = decode_error(raw)

    assert error.header is None
    assert [p.path for p in error.problems] == [""]


def test_unknown_type_is_refused_with_the_header_kept() -> None:
    error = decode_error(wire(SAMPLES["ReleaseSucceeded"], type="ReleaseExploded"))

    assert error.problems == (
        Problem(path="type", reason="unknown message type 'ReleaseExploded'"),
    )
    assert error.header is not None
    assert error.header.release_id == RELEASE_ID


def test_other_schema_version_is_refused_with_the_header_kept() -> None:
    error = decode_error(wire(SAMPLES["ReleaseSucceeded"], schema_version=2))

    assert error.problems == (Problem(path="schema_version", reason="schema version 2 is not 1"),)
    assert error.header is not None


def test_bad_payload_keeps_the_header_so_the_submission_can_be_rejected() -> None:
    data = wire(SAMPLES["SubmitRelease"])
    data["payload"]["components"][1]["version"] = "2.0 beta"
    del data["payload"]["environment"]

    error = decode_error(data)

    assert error.header is not None
    assert error.header.type == "SubmitRelease"
    assert error.header.release_id == RELEASE_ID
    assert error.header.actor == ACTOR
    assert error.header.id == "m-1"
    assert [p.path for p in error.problems] == [
        "payload.environment",
        "payload.components[1].version",
    ]
    assert error.problems[0].reason == "Field required"
    assert error.problems[1].reason.startswith("'2.0 beta' is not valid here (String should match")


def test_extra_field_in_a_payload_is_named_with_the_header_kept() -> None:
    data = wire(SAMPLES["DeployComponent"])
    data["payload"]["colour"] = "blue"

    error = decode_error(data)

    assert error.problems == (Problem(path="payload.colour", reason="unknown field"),)
    assert error.header is not None


def test_extra_field_in_the_envelope_is_named() -> None:
    error = decode_error(wire(SAMPLES["ReleaseSucceeded"], priority="high"))

    assert error.problems == (Problem(path="priority", reason="unknown field"),)
    assert error.header is None


def test_missing_and_malformed_envelope_fields_are_each_named() -> None:
    data = wire(SAMPLES["ReleaseSucceeded"], release_id="../etc", actor="")
    del data["occurred_at"]

    error = decode_error(data)

    assert [p.path for p in error.problems] == ["occurred_at", "release_id", "actor"]
    assert error.problems[0].reason == "Field required"
    assert error.header is None


def test_decode_error_message_lists_every_problem() -> None:
    data = wire(SAMPLES["DeployComponent"])
    data["payload"] = {"environment": "prod"}

    error = decode_error(json.dumps(data))

    assert str(error) == "payload.service: Field required; payload.version: Field required"
    assert error.raw == json.dumps(data).encode()


# --- problems_from ------------------------------------------------------------------------


class _Inner(BaseModel):
    name: str


class _Outer(BaseModel):
    items: list[_Inner]
    table: dict[str, _Inner]


def test_problems_from_joins_names_and_indexes_into_one_path() -> None:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate({"items": [{"name": "a"}, {}], "table": {"k": {"name": 1}}})

    assert [(p.path, p.reason) for p in problems_from(caught.value, prefix="payload")] == [
        ("payload.items[1].name", "Field required"),
        (
            "payload.table.k.name",
            "Input should be a valid string; this was read as the number 1: put it in quotes",
        ),
    ]


def test_problems_from_names_a_wrong_mapping_key_without_pydantic_markers() -> None:
    with pytest.raises(ValidationError) as caught:
        RollbackComponent.model_validate(
            {
                "environment": "prod",
                "service": "api",
                "from_version": "2",
                "to_versions": {"bad host": "1"},
            }
        )

    ((path, reason),) = [(p.path, p.reason) for p in problems_from(caught.value)]
    assert path == "to_versions.bad host"
    assert reason.startswith("key: 'bad host' is not valid here")


def test_problem_reads_as_path_and_reason() -> None:
    assert str(Problem(path="a.b", reason="wrong")) == "a.b: wrong"
    assert str(Problem(path="", reason="wrong")) == "wrong"


# --- JSON Schema --------------------------------------------------------------------------

_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "format",
    "$schema",
    "x-drover-kind",
    "$defs",
    "discriminator",  # a hint for faster validation; oneOf says the same
}
_OBJECT_KEYWORDS = {"properties", "patternProperties", "additionalProperties"}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    types: dict[str, type | tuple[type, ...]] = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    return name in types and isinstance(value, types[name])


# Keywords that check a value on its own: each holds when its test is true.
_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "const": lambda value, rule: bool(value == rule),
    "enum": lambda value, rule: value in rule,
    "type": _is_type,
    "pattern": lambda value, rule: not isinstance(value, str) or bool(re.search(rule, value)),
    # As in JSON Schema, a keyword for one type holds for values of any other type.
    "minLength": lambda value, rule: not isinstance(value, str) or len(value) >= rule,
    "maxLength": lambda value, rule: not isinstance(value, str) or len(value) <= rule,
    "minItems": lambda value, rule: not isinstance(value, list) or len(value) >= rule,
    "minimum": lambda value, rule: not _is_type(value, "number") or value >= rule,
    "maximum": lambda value, rule: not _is_type(value, "number") or value <= rule,
    "exclusiveMinimum": lambda value, rule: not _is_type(value, "number") or value > rule,
    "exclusiveMaximum": lambda value, rule: not _is_type(value, "number") or value < rule,
}


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node: Any = root
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), f"{ref} does not resolve"
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    assert isinstance(node, dict)
    return node


def _violations(
    value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$"
) -> list[str]:
    """The subset of JSON Schema that pydantic emits for the contract; anything else fails.

    (The ``jsonschema`` package is not a dependency of Drover.)
    """
    found: list[str] = []
    for keyword, rule in schema.items():
        if keyword in _ANNOTATIONS or keyword in _OBJECT_KEYWORDS:
            continue
        if keyword in _TESTS:
            if not _TESTS[keyword](value, rule):
                found.append(f"{at}: {value!r} fails {keyword} {rule!r}")
        elif keyword in _APPLICATORS:
            found += _APPLICATORS[keyword](value, rule, root, at)
        else:
            raise AssertionError(f"the test's validator does not know {keyword!r}")
    if isinstance(value, dict) and _OBJECT_KEYWORDS & set(schema):
        found += _member_violations(value, schema, root, at)
    return found


def _one_of_violations(
    value: Any, options: list[dict[str, Any]], root: dict[str, Any], at: str
) -> list[str]:
    matching = sum(not _violations(value, option, root, at) for option in options)
    if matching == 1:
        return []
    return [f"{at}: {value!r} matches {matching} options, not exactly one"]


def _required_violations(value: Any, names: list[str], root: dict[str, Any], at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [f"{at}.{name}: required" for name in names if name not in value]


def _items_violations(value: Any, rule: dict[str, Any], root: dict[str, Any], at: str) -> list[str]:
    items = value if isinstance(value, list) else []
    return [v for i, item in enumerate(items) for v in _violations(item, rule, root, f"{at}[{i}]")]


def _ref_violations(value: Any, ref: str, root: dict[str, Any], at: str) -> list[str]:
    return _violations(value, _resolve(root, ref), root, at)


def _any_of_violations(
    value: Any, options: list[dict[str, Any]], root: dict[str, Any], at: str
) -> list[str]:
    """Nothing if an option holds; else, when one option is of the value's type, its reasons."""
    reasons = [_violations(value, option, root, at) for option in options]
    if not all(reasons):
        return []
    typed = [r for o, r in zip(options, reasons, strict=True) if _is_type(value, o.get("type", ""))]
    return typed[0] if len(typed) == 1 else [f"{at}: {value!r} matches no option"]


# Keywords that apply a rule of the schema to the value, or to its parts.
_APPLICATORS: dict[str, Callable[[Any, Any, dict[str, Any], str], list[str]]] = {
    "$ref": _ref_violations,
    "anyOf": _any_of_violations,
    "oneOf": _one_of_violations,
    "required": _required_violations,
    "items": _items_violations,
}


def _member_violations(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], at: str
) -> list[str]:
    found: list[str] = []
    named = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    others = schema.get("additionalProperties", True)
    for name, item in value.items():
        rules = [rule for pattern, rule in patterns.items() if re.search(pattern, name)]
        if name in named:
            rules.append(named[name])
        elif not rules and others is False:
            found.append(f"{at}.{name}: not allowed")
        elif not rules and isinstance(others, dict):
            rules.append(others)
        for rule in rules:
            found += _violations(item, rule, root, f"{at}.{name}")
    return found


def test_json_schema_has_one_entry_per_message_type_with_its_kind() -> None:
    schemas = json_schema()

    assert set(schemas) == set(MESSAGE_TYPES)
    for name, schema in schemas.items():
        assert schema["title"] == name
        assert schema["properties"]["type"]["const"] == name
        assert schema["x-drover-kind"] == ("command" if name in COMMANDS else "event")
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) >= {"id", "type", "release_id", "payload", "actor"}


def test_json_schema_is_plain_json() -> None:
    schemas = json_schema()

    assert json.loads(json.dumps(schemas)) == schemas


@pytest.mark.parametrize("name", SAMPLES)
def test_every_reference_in_a_schema_resolves_within_it(name: str) -> None:
    schema = json_schema()[name]
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))

    for ref in refs:
        _resolve(schema, ref)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_encoded_message_conforms_to_its_schema(name: str) -> None:
    schema = json_schema()[name]
    message = json.loads(event(SAMPLES[name]).encode())

    assert _violations(message, schema, schema) == []


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        ({"type": "DeployComponent"}, "$.type"),
        ({"schema_version": 2}, "$.schema_version"),
        ({"release_id": "no spaces"}, "$.release_id"),
        ({"priority": "high"}, "$.priority: not allowed"),
    ],
)
def test_schema_refuses_what_decode_refuses(change: dict[str, Any], violation: str) -> None:
    schema = json_schema()["SubmitRelease"]
    data = wire(SAMPLES["SubmitRelease"], **change)

    with pytest.raises(MessageDecodeError):
        decode(data)
    assert any(v.startswith(violation) for v in _violations(data, schema, schema))


def test_schema_checks_nested_payload_models() -> None:
    schema = json_schema()["SubmitRelease"]
    data = wire(SAMPLES["SubmitRelease"])
    data["payload"]["components"][0]["version"] = "2.0 beta"

    version = ComponentRequest.model_json_schema()["properties"]["version"]
    pattern = next(option["pattern"] for option in version["anyOf"] if "pattern" in option)
    assert _violations(data, schema, schema) == [
        f"$.payload.components[0].version: '2.0 beta' fails pattern {pattern!r}"
    ]


# --- batches: a worker's reports made between two steps travel as one message -----------


def _reports(release_id: str = RELEASE_ID) -> list[Envelope]:
    where = {"environment": "prod", "service": "api", "batch": 1, "hosts": HOSTS}
    return [
        event(StepSucceeded(**where, step=Step.DRAIN, duration_ms=3.0), release_id=release_id),
        event(StepStarted(**where, step=Step.DEPLOY), release_id=release_id),
    ]


def test_a_batch_decodes_to_its_messages_in_order() -> None:
    reports = _reports()

    assert decode_body(encode_batch(reports)) == reports
    assert decode_body(reports[0].encode()) == reports[:1]
    assert decode_body(encode_batch(reports).decode()) == reports  # a body handed over as text


def test_a_batch_with_a_bad_message_is_refused_whole_and_says_which() -> None:
    good, _ = _reports()
    bad = json.loads(good.encode())
    bad["payload"]["step"] = "dance"
    body = f"[{good.encode().decode()},{json.dumps(bad)}]".encode()

    with pytest.raises(MessageDecodeError) as refused:
        decode_body(body)

    assert refused.value.raw == body  # nothing of it is lost: the whole body is kept
    assert refused.value.problems[0].path.startswith("[1].payload.step")


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"[]", "an empty batch"), (b"[1]", "")],
)
def test_an_empty_or_malformed_batch_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MessageDecodeError) as refused:
        decode_body(body)
    assert reason in str(refused.value)


def test_a_batch_holds_one_release() -> None:
    mixed = [_reports("r-1")[0], _reports("r-2")[1]]

    with pytest.raises(ValueError, match="one release"):
        encode_batch(mixed)
    body = b"[" + b",".join(m.encode() for m in mixed) + b"]"
    with pytest.raises(MessageDecodeError, match="more than one release"):
        decode_body(body)
