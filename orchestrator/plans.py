"""The files users write: the fleet (environment as code) and releases.

Both are read here, once, into frozen models; every problem comes back as a
:class:`InvalidInput` naming the file, the field path and the reason, so that nothing
is deployed from a file that is wrong anywhere.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.contract import (
    ComponentName,
    ComponentRequest,
    Problem,
    SubmitRelease,
    problems_from,
)
from orchestrator.fleet import (
    EnvironmentConfig,
    Fleet,
    ServiceConfig,
    flips_flags,
    gate_sources,
    strategy_problem,
)
from orchestrator.fleet.base import FleetModel

__all__ = [
    "InvalidInput",
    "ReleasePlan",
    "load_fleet",
    "load_model",
    "load_release",
    "plan_release",
]


class InvalidInput(Exception):
    """A file or message that cannot be used, with every reason found in it."""

    def __init__(self, source: str, problems: Sequence[Problem]):
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.explain())

    def explain(self) -> str:
        lines = [f"{self.source}: invalid"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class ReleasePlan(FleetModel):
    """A release checked against the fleet: its components in dependency waves."""

    request: SubmitRelease
    waves: tuple[tuple[ComponentName, ...], ...]


# --- loading ------------------------------------------------------------------------------


_M = TypeVar("_M", bound=BaseModel)


# libyaml's parser where PyYAML has it (its wheels do), PyYAML's own elsewhere: the same
# documents and the same constructors, but a fleet file of 10,000 hosts is read four
# times as fast (0.18 s, not 0.74: `bench fleet`), by every process and command as it
# starts.
if TYPE_CHECKING or yaml.__with_libyaml__:  # noqa: SIM108 - mypy takes a base from a statement
    _SafeLoader = yaml.CSafeLoader
else:
    _SafeLoader = yaml.SafeLoader


class _UniqueKeyLoader(_SafeLoader):
    """A safe loader that refuses a key given twice instead of keeping the last one."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Only the keys written in this mapping must be unique: a key brought in by a merge
    # (``<<: *defaults``) may be overridden here, which is what merging is for.
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            problem = "a key must be a plain value, not a list or a mapping"
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)  # merges, then the last value wins


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(str(path), [Problem(path="", reason=exc.strerror or str(exc))]) from exc
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text: byte {exc.start} cannot be read ({exc.reason})"
        raise InvalidInput(str(path), [Problem(path="", reason=reason)]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # safe: the safe constructors only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if mark and _character_at(text, mark.line, mark.column) == "\t":
            problem += " (a tab: YAML indents with spaces)"  # libyaml does not say what it found
        reason = f"malformed YAML{where}: {problem}"
        raise InvalidInput(str(path), [Problem(path="", reason=reason)]) from exc
    except RecursionError as exc:
        reason = "malformed YAML: nested too deeply"
        raise InvalidInput(str(path), [Problem(path="", reason=reason)]) from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # PyYAML's constructors raise these, not YAMLError, for scalars they cannot
        # build (an impossible date like 2024-02-30, "0x_", "!!bool maybe").
        reason = f"malformed YAML: a value cannot be read ({type(exc).__name__}: {exc})"
        raise InvalidInput(str(path), [Problem(path="", reason=reason)]) from exc


def _character_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    return lines[line][column : column + 1] if line < len(lines) else ""


def _validate(model: type[_M], data: Any, source: str) -> _M:
    if not isinstance(data, Mapping):
        problem = Problem(path="", reason="expected a mapping at the top of the file")
        raise InvalidInput(source, [problem])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(source, problems_from(exc)) from exc


def load_model(model: type[_M], path: str | Path) -> _M:
    """Any YAML file Drover reads, into its model, or InvalidInput naming every problem."""
    path = Path(path)
    return _validate(model, _read_yaml(path), str(path))


def load_fleet(path: str | Path) -> Fleet:
    return load_model(Fleet, path)


def load_release(path: str | Path) -> SubmitRelease:
    """Read a release file; it has the shape of the ``SubmitRelease`` command."""
    return load_model(SubmitRelease, path)


# --- checking a release against the fleet -------------------------------------------------


def plan_release(fleet: Fleet, request: SubmitRelease, source: str = "release") -> ReleasePlan:
    """Check a release against the fleet and order it; raise :class:`InvalidInput` if wrong."""
    problems = list(_fleet_problems(fleet, request)) + list(_graph_problems(request.components))
    if problems:
        raise InvalidInput(source, problems)
    return ReleasePlan(request=request, waves=_waves(request.components))


def _fleet_problems(fleet: Fleet, request: SubmitRelease) -> Iterable[Problem]:
    environment = fleet.environments.get(request.environment)
    if environment is None:
        known = ", ".join(sorted(fleet.environments))
        reason = f"unknown environment {request.environment!r} (the fleet has: {known})"
        yield Problem(path="environment", reason=reason)
        return
    for index, component in enumerate(request.components):
        service = environment.services.get(component.service)
        if service is None:
            yield Problem(
                path=f"components[{index}].service",
                reason=f"unknown service {component.service!r} in {request.environment!r}",
            )
            continue
        yield from _component_problems(f"components[{index}]", component, service, environment)


def _component_problems(
    path: str, component: ComponentRequest, service: ServiceConfig, environment: EnvironmentConfig
) -> Iterable[Problem]:
    """What the fleet cannot do for this component: its own strategy, or its flag flip."""
    if component.strategy is not None:
        problem = strategy_problem(component.strategy, service.hosts, service.driver)
        if problem:
            yield Problem(path=f"{path}.strategy", reason=problem)
        for where, gate in gate_sources(component.strategy):
            if gate.source not in environment.metrics:
                reason = (
                    f"unknown metric source {gate.source!r} in {component.service!r}'s environment"
                )
                yield Problem(path=f"{path}.strategy.{where}.source", reason=reason)
    if component.flag is not None and not flips_flags(service.driver):
        reason = (
            f"{component.service!r}'s driver has no way to flip flags (see its driver settings)"
        )
        yield Problem(path=f"{path}.flag", reason=reason)


def _graph_problems(components: Sequence[ComponentRequest]) -> Iterable[Problem]:
    first_index: dict[str, int] = {}
    for index, component in enumerate(components):
        if component.name in first_index:
            field = "flag" if component.flag else "service"
            yield Problem(
                path=f"components[{index}].{field}",
                reason=(
                    f"{component.name!r} is already components[{first_index[component.name]}]"
                    "; a release moves a service (or flips a flag) once"
                ),
            )
        else:
            first_index[component.name] = index
    for index, component in enumerate(components):
        for position, dependency in enumerate(component.depends_on):
            path = f"components[{index}].depends_on[{position}]"
            if dependency == component.name:
                yield Problem(path=path, reason=f"{dependency!r} cannot depend on itself")
            elif dependency not in first_index:
                reason = f"{dependency!r} is not a component of this release"
                yield Problem(path=path, reason=reason)
    cycle = _find_cycle(components)
    if cycle:
        yield Problem(path="components", reason="dependency cycle: " + " -> ".join(cycle))


def _find_cycle(components: Sequence[ComponentRequest]) -> list[str]:
    # Depth-first with an explicit stack, not recursion: a release is client input, and a
    # long chain of components must not exhaust Python's recursion limit.
    edges = {c.name: [d for d in c.depends_on if d != c.name] for c in components}
    done: set[str] = set()
    for root, dependencies in edges.items():
        if root in done:
            continue
        trail = [root]
        pending = [iter(dependencies)]
        while pending:
            dependency = next(pending[-1], None)
            if dependency is None:
                done.add(trail.pop())
                pending.pop()
            elif dependency in trail:
                return [*trail[trail.index(dependency) :], dependency]
            elif dependency in edges and dependency not in done:
                trail.append(dependency)
                pending.append(iter(edges[dependency]))
    return []


def _waves(components: Sequence[ComponentRequest]) -> tuple[tuple[str, ...], ...]:
    """Group components by dependency depth: each wave needs only earlier waves."""
    remaining = {c.name: set(c.depends_on) for c in components}
    done: set[str] = set()
    waves: list[tuple[str, ...]] = []
    while remaining:
        ready = tuple(s for s, deps in remaining.items() if deps <= done)
        waves.append(ready)
        done.update(ready)
        for service in ready:
            del remaining[service]
    return tuple(waves)
