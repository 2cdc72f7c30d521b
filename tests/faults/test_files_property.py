"""Scenario 8: release and fleet files, and bytes off the bus, whatever is in them.

Property-based. What a user writes, or what arrives on the bus, either becomes a valid
model or is refused with a clear error (:class:`InvalidInput` naming the file, or
:class:`MessageDecodeError`), each problem with a reason; never any other exception. A
release that loads is accepted by the saga exactly when it plans against the fleet, and
is otherwise rejected with the planner's own problems.

The inputs pinned with ``@example`` and in ``LOADER_CRASHES`` are crashes these
properties once found in Drover; they stay as regression cases.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.contract import (
    AbortRelease,
    CheckDeadlines,
    ComponentDeployed,
    ComponentRequest,
    Envelope,
    MessageDecodeError,
    Problem,
    ReleaseAccepted,
    ReleaseRejected,
    Step,
    StepFailed,
    SubmitRelease,
    decode,
    envelope,
)
from orchestrator.plans import InvalidInput, load_fleet, load_release, plan_release
from orchestrator.saga import Decision, ReleaseStatus, decide

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ENVIRONMENTS = ("prod", "staging", "eu-1")
SERVICES = ("api", "db", "web", "cache", "queue_2", "search")
STRANGERS = ("billing", "ledger")  # valid names that no generated fleet holds
UNKNOWN_ENVIRONMENT = "qa"  # a valid name that no generated fleet holds

Loader = Callable[[str | Path], object]
LOADERS = [pytest.param(load_release, id="release"), pytest.param(load_fleet, id="fleet")]
Case = tuple[Any, str]  # a file's content, and the path of the part that was broken in it


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module: hypothesis refuses function-scoped fixtures."""
    return tmp_path_factory.mktemp("files")


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _assert_clear(refused: InvalidInput, path: Path) -> None:
    """The file is named, and every problem in it says why."""
    assert refused.source == str(path)
    assert refused.problems
    assert all(isinstance(problem, Problem) for problem in refused.problems)
    assert all(problem.reason.strip() for problem in refused.problems), refused.problems
    assert refused.explain().startswith(f"{path}: invalid")


def _points_into(path: str, part: str) -> bool:
    """Whether a problem's field path is ``part`` or lies inside it."""
    return not part or path == part or path.startswith((f"{part}.", f"{part}["))


# --- 1. any text ---------------------------------------------------------------------------

YAML_TOKENS = (
    "\n", "  ", "- ", ": ", "[", "]", "{", "}", ", ", "'", '"', "# ", "&a ", "*a", "<<: ",
    "? ", "| ", "> ", "!", "!!int ", "!!str ", "!!bool ", "!!float ", "!!timestamp ",
    "!!map ", "!!seq ", "!!binary ", "!!set ", "---\n", "...\n", "%YAML 1.1\n", "\t", "\x00",
    "\ufeff", "0", "1", "b", "x", "_", "-", ".", "2024-", "13-", "45", "1.0", "environment",
    "components", "service", "version", "depends_on", "reason", "environments", "services",
    "hosts", "driver", "kind: simulated", "initial_version", "prod", "api",
)  # fmt: skip
yamlish_text = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=3), max_size=40).map(
    "".join
)
file_contents = st.one_of(st.text().map(str.encode), yamlish_text.map(str.encode), st.binary())

# Plain YAML that PyYAML's safe loader resolves to a type and then cannot build: the error
# is not a yaml.YAMLError, so _read_yaml lets it through as it is.
LOADER_CRASHES: dict[str, tuple[bytes, type[Exception]]] = {
    "int-literal-without-digits": (b"0x_\n", ValueError),
    "empty-int-tag": (b"!!int\n", IndexError),
    "impossible-date": (b"reason: 2024-02-30\n", ValueError),
    "bool-tag-on-a-non-bool": (b"!!bool maybe\n", KeyError),
    "timestamp-tag-on-a-non-date": (b"!!timestamp soon\n", AttributeError),
    "map-tag-on-a-sequence": (b"!!map [1]\n", TypeError),
    "deep-nesting": (b"[" * 10_000, RecursionError),
}


def _pin_loader_crashes(test: Callable[..., None]) -> Callable[..., None]:
    """Try every known crash first, so the test fails for certain while any is left."""
    for content, _ in LOADER_CRASHES.values():
        test = example(content=content)(test)
    return test


@pytest.mark.parametrize("load", LOADERS)
@_settings(max_examples=300)
@given(content=file_contents)
@_pin_loader_crashes
def test_any_file_content_loads_or_is_refused_naming_the_file(
    workdir: Path, load: Loader, content: bytes
) -> None:
    path = workdir / "any.yaml"
    path.write_bytes(content)
    try:
        load(path)
    except InvalidInput as refused:
        _assert_clear(refused, path)


@pytest.mark.parametrize(
    "content",
    [pytest.param(content, id=name) for name, (content, _) in LOADER_CRASHES.items()],
)
@pytest.mark.parametrize("load", LOADERS)
def test_yaml_the_safe_loader_cannot_build_is_refused_as_invalid_input(
    workdir: Path, load: Loader, content: bytes
) -> None:
    path = workdir / "unbuildable.yaml"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as refused:
        load(path)
    _assert_clear(refused.value, path)


# --- 2. any structure ----------------------------------------------------------------------

FIELD_NAMES = (
    "environment", "reason", "components", "service", "version", "depends_on",
    "environments", "services", "hosts", "strategy", "batch", "min_healthy", "driver", "kind",
    "initial_version", "rolling", "canary", "blue_green", "steps", "flag",
    "latency_ms", "fail", "step", "host", "step_timeout_s", "component_timeout_s",
)  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(("simulated", "deploy", "1.0.0", "prod", "api", "h1")),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(), st.none())
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@pytest.mark.parametrize("load", LOADERS)
@_settings(max_examples=300)
@given(data=structures)
def test_any_yaml_structure_loads_or_is_refused_naming_the_file(
    workdir: Path, load: Loader, data: Any
) -> None:
    path = _write(workdir / "structure.yaml", data)
    try:
        load(path)
    except InvalidInput as refused:
        _assert_clear(refused, path)


# --- valid pieces --------------------------------------------------------------------------

# Mostly the usual shapes, sometimes anything the patterns allow: regexes draw slowly.
versions = st.sampled_from(("1.0", "2.0.0", "3.1.1-rc.1", "2024.05.01", "1.0+b7", "0x_")) | (
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,12}", fullmatch=True)
)
host_names = st.sampled_from(("h1", "h2", "web-1", "db.eu", "10.0.0.1", "2024-13-45")) | (
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
)
steps = st.sampled_from([step.value for step in Step])
driver_options = st.fixed_dictionaries({}, optional={"latency_ms": st.integers(0, 600_000)})
service_options = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.fixed_dictionaries(
            {"kind": st.just("rolling")},
            optional={"batch": st.integers(1, 5) | st.sampled_from(("50%", "100%"))},
        ),
        "step_timeout_s": st.floats(min_value=0.001, max_value=86_400),
        "component_timeout_s": st.integers(1, 7 * 86_400),
    },
)


@st.composite
def service_configs(draw: st.DrawFn) -> dict[str, Any]:
    hosts = draw(st.lists(host_names, min_size=1, max_size=3, unique=True))
    driver = {"kind": "simulated", "initial_version": draw(versions), **draw(driver_options)}
    if draw(st.booleans()):
        injection = {"step": draw(steps)}
        if draw(st.booleans()):
            injection["host"] = draw(st.sampled_from(hosts))
        driver["fail"] = [injection]
    return {"hosts": hosts, "driver": driver, **draw(service_options)}


@st.composite
def fleet_files(draw: st.DrawFn) -> dict[str, Any]:
    environments = draw(
        st.lists(st.sampled_from(ENVIRONMENTS), min_size=1, max_size=2, unique=True)
    )
    services = st.dictionaries(st.sampled_from(SERVICES), service_configs(), min_size=1, max_size=3)
    return {"environments": {name: {"services": draw(services)} for name in environments}}


@st.composite
def plannable_releases(draw: st.DrawFn, fleet: dict[str, Any]) -> dict[str, Any]:
    """A release that loads and plans against ``fleet``: known names, no cycle."""
    environment = draw(st.sampled_from(sorted(fleet["environments"])))
    known = sorted(fleet["environments"][environment]["services"])
    services = draw(st.lists(st.sampled_from(known), min_size=1, unique=True))
    components = []
    for index, service in enumerate(services):
        component: dict[str, Any] = {"service": service, "version": draw(versions)}
        depends_on = draw(st.lists(st.sampled_from(services[:index]), unique=True)) if index else []
        if depends_on or draw(st.booleans()):
            component["depends_on"] = depends_on
        components.append(component)
    release: dict[str, Any] = {"environment": environment, "components": components}
    if draw(st.booleans()):
        release["reason"] = draw(st.text(max_size=40))
    return release


# --- 2b. near-valid releases: one part broken ----------------------------------------------

not_text = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
not_a_list = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.just({}))
not_a_mapping = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
BAD_VERSIONS = ("1 0", "", " 1.0", "1.0 ", "-1", ".1", "_1", "1/2", "v1\n", "x" * 65, "é1")
BAD_NAMES = ("Api", "", "-api", "_api", "a" * 64, "a b", "api\n", "api.v2", "ápi")
bad_versions = st.sampled_from(BAD_VERSIONS) | not_text
bad_names = st.sampled_from(BAD_NAMES) | not_text


def _component_index(draw: st.DrawFn, release: dict[str, Any]) -> int:
    return draw(st.integers(0, len(release["components"]) - 1))


def _drop_field(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    index = _component_index(draw, release)
    key = draw(st.sampled_from(("environment", "components", "service", "version")))
    if key in release:
        del release[key]
        return release, key
    del release["components"][index][key]
    return release, f"components[{index}].{key}"


def _wrong_type(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    index = _component_index(draw, release)
    where = draw(st.sampled_from(("environment", "components", "component", "depends_on")))
    if where == "environment":
        release["environment"] = draw(not_text)
        return release, "environment"
    if where == "components":
        release["components"] = draw(not_a_list | st.just([]))
        return release, "components"
    if where == "component":
        release["components"][index] = draw(not_a_mapping)
        return release, f"components[{index}]"
    release["components"][index]["depends_on"] = draw(not_a_list)
    return release, f"components[{index}].depends_on"


def _bad_value(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    index = _component_index(draw, release)
    field = draw(st.sampled_from(("environment", "service", "version", "reason")))
    if field == "environment":
        release["environment"] = draw(bad_names)
        return release, "environment"
    if field == "reason":
        release["reason"] = draw(st.just("x" * 501) | not_text)
        return release, "reason"
    release["components"][index][field] = draw(bad_versions if field == "version" else bad_names)
    return release, f"components[{index}].{field}"


def _extra_key(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    value = draw(scalars)
    if draw(st.booleans()):
        key = draw(st.sampled_from(("enviroment", "component", "services", "version", "x-note")))
        release[key] = value
        return release, key
    index = _component_index(draw, release)
    key = draw(st.sampled_from(("dependencies", "depends", "hosts", "versions", "environment")))
    release["components"][index][key] = value
    return release, f"components[{index}]"


def _not_a_mapping(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    return draw(not_a_mapping | st.just(release["components"])), ""


def _unknown_name(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    if draw(st.booleans()):
        release["environment"] = UNKNOWN_ENVIRONMENT
        return release, "environment"
    index = _component_index(draw, release)
    release["components"][index]["service"] = draw(st.sampled_from(STRANGERS))
    return release, f"components[{index}].service"


def _duplicate(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    service = release["components"][_component_index(draw, release)]["service"]
    release["components"].append({"service": service, "version": draw(versions)})
    return release, f"components[{len(release['components']) - 1}]"


def _bad_dependency(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    index = _component_index(draw, release)
    component = release["components"][index]
    in_release = {c["service"] for c in release["components"]}
    outsiders = sorted(set(SERVICES + STRANGERS) - in_release)
    dependency = draw(st.sampled_from([component["service"], *outsiders]))
    component["depends_on"] = [*component.get("depends_on", []), dependency]
    return release, f"components[{index}].depends_on"


def _cycle(draw: st.DrawFn, release: dict[str, Any]) -> Case:
    components = release["components"]
    if len(components) < 2:
        return _bad_dependency(draw, release)
    first = draw(st.integers(0, len(components) - 2))
    second = draw(st.integers(first + 1, len(components) - 1))
    for index, other in ((first, second), (second, first)):
        depends_on = components[index].setdefault("depends_on", [])
        if components[other]["service"] not in depends_on:
            depends_on.append(components[other]["service"])
    return release, "components"


RELEASE_BREAKAGES = (
    _drop_field,
    _wrong_type,
    _bad_value,
    _extra_key,
    _not_a_mapping,
    _unknown_name,
    _duplicate,
    _bad_dependency,
    _cycle,
)


@st.composite
def broken_releases(draw: st.DrawFn) -> tuple[dict[str, Any], Any, str]:
    """A fleet, a release valid against it but for one broken part, and that part's path."""
    fleet = draw(fleet_files())
    release = copy.deepcopy(draw(plannable_releases(fleet)))
    breakage = draw(st.sampled_from(RELEASE_BREAKAGES))
    broken, part = breakage(draw, release)
    return fleet, broken, part


@_settings(max_examples=300)
@given(case=broken_releases())
def test_a_near_valid_release_is_refused_at_the_part_that_was_broken(
    workdir: Path, case: tuple[dict[str, Any], Any, str]
) -> None:
    fleet_data, release_data, part = case
    fleet = load_fleet(_write(workdir / "fleet.yaml", fleet_data))
    path = _write(workdir / "broken-release.yaml", release_data)
    with pytest.raises(InvalidInput) as refused:
        plan_release(fleet, load_release(path), source=str(path))
    _assert_clear(refused.value, path)
    fields = [problem.path for problem in refused.value.problems]
    assert any(_points_into(field, part) for field in fields), (part, fields)


# --- 2c. near-valid fleets: one part broken ------------------------------------------------

BAD_HOSTS = ("", "-h", "_h", "h 1", "h/1", "h\n", "x" * 254, "hé")
FLEET_BREAKAGES: dict[str, st.SearchStrategy[Any]] = {
    "hosts": st.one_of(
        st.just([]), st.just(["h1", "h1"]), st.lists(st.sampled_from(BAD_HOSTS), min_size=1)
    )
    | not_a_list,
    "strategy": st.sampled_from(
        (
            {"kind": "rolling", "batch": 0},
            {"kind": "rolling", "batch": "two"},
            {"kind": "rolling", "batch": "150%"},
            {"kind": "rolling", "min_healthy": "100%"},
            {"kind": "sideways"},
            {"kind": "canary", "steps": []},
            {"kind": "canary", "steps": [{"bake_s": 1}]},
            {"kind": "blue_green", "blue": ["h1"], "green": ["h1"]},
            None,
        )
    ),
    "driver": st.one_of(
        not_a_mapping,
        st.just({"kind": "ssh", "initial_version": "1.0"}),
        st.just({"kind": "simulated"}),
        st.sampled_from(BAD_VERSIONS).map(lambda v: {"kind": "simulated", "initial_version": v}),
        st.sampled_from((-1, 600_001, "fast")).map(
            lambda ms: {"kind": "simulated", "initial_version": "1.0", "latency_ms": ms}
        ),
        st.sampled_from(({"step": "reboot"}, {"step": "deploy", "host": "elsewhere"}, {})).map(
            lambda fail: {"kind": "simulated", "initial_version": "1.0", "fail": [fail]}
        ),
    ),
    "step_timeout_s": st.sampled_from((0, -5, 86_401, "soon", float("nan"), float("inf"))),
    "component_timeout_s": st.sampled_from((0, -5, 7 * 86_400 + 1, None, float("inf"))),
    "hostnames": scalars,  # an unknown field
}


@st.composite
def broken_fleets(draw: st.DrawFn) -> Case:
    """A valid fleet but for one broken part, and that part's path."""
    fleet = copy.deepcopy(draw(fleet_files()))
    environments = fleet["environments"]
    environment = draw(st.sampled_from(sorted(environments)))
    services = environments[environment]["services"]
    service = draw(st.sampled_from(sorted(services)))
    where = draw(st.sampled_from((*FLEET_BREAKAGES, "service name", "environment", "top")))
    if where in FLEET_BREAKAGES:
        services[service][where] = draw(FLEET_BREAKAGES[where])
        return fleet, f"environments.{environment}.services.{service}.{where}"
    if where == "service name":
        services[draw(st.sampled_from(BAD_NAMES))] = services.pop(service)
        return fleet, f"environments.{environment}.services"
    if where == "environment":
        environments[environment] = draw(st.sampled_from(({}, {"services": {}}, None, [])))
        return fleet, f"environments.{environment}"
    fleet["environments"] = draw(not_a_mapping | st.just({}))
    return fleet, "environments"


@_settings(max_examples=300)
@given(case=broken_fleets())
def test_a_near_valid_fleet_is_refused_at_the_part_that_was_broken(
    workdir: Path, case: Case
) -> None:
    fleet_data, part = case
    path = _write(workdir / "broken-fleet.yaml", fleet_data)
    with pytest.raises(InvalidInput) as refused:
        load_fleet(path)
    _assert_clear(refused.value, path)
    fields = [problem.path for problem in refused.value.problems]
    assert any(_points_into(field, part) for field in fields), (part, fields)


# --- 3. the saga decides as the planner does -----------------------------------------------


@st.composite
def tangled_releases(draw: st.DrawFn, fleet: dict[str, Any]) -> dict[str, Any]:
    """A release that loads, with names and dependencies drawn at random: often wrong."""
    environment = draw(st.sampled_from([*sorted(fleet["environments"]), UNKNOWN_ENVIRONMENT]))
    services = fleet["environments"].get(environment, {"services": SERVICES})["services"]
    names = st.sampled_from(sorted({*services, *STRANGERS}))
    component = st.fixed_dictionaries(
        {"service": names, "version": versions},
        optional={"depends_on": st.lists(names, max_size=3)},
    )
    components = draw(st.lists(component, min_size=1, max_size=5))
    return {"environment": environment, "components": components}


@st.composite
def fleets_and_releases(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    fleet = draw(fleet_files())
    return fleet, draw(plannable_releases(fleet) | tangled_releases(fleet))


def _submission(release: SubmitRelease) -> Envelope:
    return envelope(release, release_id="R-1", actor="ci", message_id="submit-1", occurred_at=T0)


@_settings(max_examples=300)
@given(case=fleets_and_releases())
def test_the_saga_accepts_a_loaded_release_exactly_when_it_plans_and_rejects_it_otherwise(
    workdir: Path, case: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    fleet_data, release_data = case
    fleet = load_fleet(_write(workdir / "fleet.yaml", fleet_data))
    release = load_release(_write(workdir / "release.yaml", release_data))
    try:
        plan_release(fleet, release)
    except InvalidInput as invalid:
        _assert_rejected(decide(None, _submission(release), fleet), invalid.problems)
    else:
        _assert_accepted(decide(None, _submission(release), fleet), release)


def _assert_accepted(decision: Decision, release: SubmitRelease) -> None:
    state = decision.state
    assert state is not None
    assert state.status is ReleaseStatus.QUEUED
    assert state.environment == release.environment
    assert {s: c.version for s, c in state.components.items()} == {
        c.service: c.version for c in release.components
    }
    accepted = ReleaseAccepted(
        environment=release.environment, reason=release.reason, components=release.components
    )
    assert decision.outgoing == (accepted,)


def _assert_rejected(decision: Decision, problems: tuple[Problem, ...]) -> None:
    state = decision.state
    assert state is not None
    assert state.status is ReleaseStatus.REJECTED
    assert state.components == {}
    assert decision.outgoing == (ReleaseRejected(problems=problems),)


# --- 4. anything off the bus ---------------------------------------------------------------

# Off the wire, JSON escapes such as "\ud800" decode to lone surrogates: strings hold them.
wire_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | wire_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(wire_text, children, max_size=4)
    ),
    max_leaves=20,
)

SAMPLES = tuple(
    envelope(payload, release_id="R-1", actor="ci", message_id=f"m-{index}", occurred_at=T0)
    for index, payload in enumerate(
        (
            SubmitRelease(
                environment="prod", components=(ComponentRequest(service="api", version="2.0"),)
            ),
            AbortRelease(reason="stop"),
            CheckDeadlines(now=T0),
            StepFailed(
                environment="prod",
                service="api",
                step=Step.VERIFY,
                batch=1,
                hosts=("h1",),
                host="h1",
                reason="no answer",
            ),
            ComponentDeployed(
                environment="prod", service="api", version="2.0", previous_versions={"h1": "1.0"}
            ),
        )
    )
)
HEADER_FIELDS = tuple(SAMPLES[0].to_wire())


# What replaces a field: usually text of the right type, sometimes any JSON at all.
field_values = st.one_of(wire_text, json_values)


@st.composite
def envelope_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A real message off the wire with some of its fields, or its payload's, replaced."""
    wire = copy.deepcopy(draw(st.sampled_from(SAMPLES)).to_wire())
    for field in draw(st.lists(st.sampled_from(HEADER_FIELDS), max_size=3, unique=True)):
        action = draw(st.sampled_from(("replace", "replace", "drop", "other type")))
        if action == "drop":
            del wire[field]
        elif action == "other type":
            wire["type"] = draw(st.sampled_from(SAMPLES)).type
        else:
            wire[field] = draw(field_values)
    payload = wire.get("payload")
    if isinstance(payload, dict) and payload and draw(st.booleans()):
        payload[draw(st.sampled_from(sorted(payload)))] = draw(field_values)
    if draw(st.integers(0, 3)) == 0:
        wire[draw(wire_text)] = draw(json_values)
    return wire


json_objects = st.dictionaries(wire_text, json_values, max_size=6) | envelope_shaped()


def _decodes_or_says_why(raw: bytes | dict[str, Any]) -> Envelope | None:
    try:
        return decode(raw)
    except MessageDecodeError as refused:
        assert refused.problems
        assert all(problem.reason.strip() for problem in refused.problems), refused.problems
        return None


@_settings(max_examples=500)
@given(raw=json_objects)
def test_any_json_object_decodes_to_an_envelope_or_is_refused_with_problems(
    raw: dict[str, Any],
) -> None:
    _decodes_or_says_why(raw)


def _with_payload(message: Envelope, **fields: Any) -> dict[str, Any]:
    wire = message.to_wire()
    return {**wire, "payload": {**wire["payload"], **fields}}


def _as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# Bounded well below the ~1,000 levels at which json.loads gives up: see the test below.
any_bytes = st.one_of(
    st.binary(max_size=300),
    json_objects.map(_as_bytes),
    json_values.map(_as_bytes),
    st.tuples(json_objects.map(_as_bytes), st.integers(0, 200)).map(lambda cut: cut[0][: cut[1]]),
)


@_settings(max_examples=500)
@given(raw=any_bytes)
def test_any_bytes_decode_to_an_envelope_or_are_refused_with_problems(raw: bytes) -> None:
    _decodes_or_says_why(raw)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000], ids=["array", "object"])
def test_deeply_nested_json_is_refused_with_problems(raw: bytes) -> None:
    with pytest.raises(MessageDecodeError) as refused:
        decode(raw)
    assert refused.value.problems


@_settings(max_examples=300)
@given(raw=json_objects)
@example(raw={**SAMPLES[1].to_wire(), "causation_id": "\ud800"})
@example(raw=_with_payload(SAMPLES[3], reason="\ud800"))
def test_an_envelope_decode_accepts_encodes_back_to_itself(raw: dict[str, Any]) -> None:
    accepted = _decodes_or_says_why(raw)
    if accepted is not None:
        assert decode(accepted.encode()) == accepted
