"""How a strategy unfolds for one service: the stages a worker goes through, in order.

Pure, so that ``drover plan`` shows exactly what a worker will do. A blue/green rollout
depends on which colour serves when it starts, so it is unfolded for a given colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from orchestrator.fleet import ServiceConfig
from orchestrator.fleet.base import hosts_in
from orchestrator.fleet.checks import MetricGate
from orchestrator.fleet.strategies import BlueGreenStrategy, CanaryStrategy, Strategy

__all__ = [
    "Analysis",
    "Bake",
    "Batch",
    "Gates",
    "Stage",
    "Switch",
    "stages_of",
]

Colour = Literal["blue", "green"]


@dataclass(frozen=True)
class Batch:
    """Hosts moved together: drain, deploy, verify, undrain (no drain for an idle colour)."""

    number: int
    hosts: tuple[str, ...]
    drain: bool = True


@dataclass(frozen=True)
class Bake:
    """The canary hosts serve for a while before they are judged."""

    number: int
    seconds: float


@dataclass(frozen=True)
class Analysis:
    """The canary hosts' metrics against the others'; inconclusive waits for a human."""

    number: int
    gates: tuple[MetricGate, ...]
    canary: tuple[str, ...]  # the hosts on the new version at this point


@dataclass(frozen=True)
class Switch:
    """Blue/green: traffic moves to ``to``; the colour that served stays as it is."""

    number: int
    to: Colour


@dataclass(frozen=True)
class Gates:
    """The service's metric gates, once every host is on the new version."""

    number: int
    gates: tuple[MetricGate, ...]


Stage = Batch | Bake | Analysis | Switch | Gates


def stages_of(service: ServiceConfig, strategy: Strategy, live: Colour = "blue") -> list[Stage]:
    """Every stage of a rollout, numbered from 1 in the order they run."""
    if isinstance(strategy, BlueGreenStrategy):
        idle: Colour = "green" if live == "blue" else "blue"
        parts: list[Stage] = [Batch(0, strategy.colour(idle), drain=False), Switch(0, idle)]
    elif isinstance(strategy, CanaryStrategy):
        parts = _canary(service.hosts, strategy)
    else:
        parts = [Batch(0, hosts) for hosts in strategy.batches(service.hosts)]
    if service.gates:
        parts.append(Gates(0, service.gates))
    return _numbered(parts)


def _canary(hosts: tuple[str, ...], strategy: CanaryStrategy) -> list[Stage]:
    """Each ``hosts`` step moves hosts up to its count, in batches; the rest go at the end."""
    parts: list[Stage] = []
    moved = 0
    for step in strategy.steps:
        if step.hosts is not None:
            # Never all of them: a canary needs a baseline to be compared with.
            wanted = min(hosts_in(step.hosts, len(hosts), at_least_one=True), len(hosts) - 1)
            parts += _batches(hosts[moved : max(moved, wanted)], strategy.batch_size(len(hosts)))
            moved = max(moved, wanted)
        elif step.bake_s is not None:
            parts.append(Bake(0, step.bake_s))
        elif step.analysis is not None:
            parts.append(Analysis(0, step.analysis.gates, hosts[:moved]))
    parts += _batches(hosts[moved:], strategy.batch_size(len(hosts)))
    return parts


def _batches(hosts: Sequence[str], size: int) -> list[Stage]:
    return [Batch(0, tuple(hosts[i : i + size])) for i in range(0, len(hosts), size)]


def _numbered(parts: list[Stage]) -> list[Stage]:
    """Batches are numbered among batches (as the timeline says "batch 2"), others apart."""
    numbered: list[Stage] = []
    counts: dict[type, int] = {}
    for part in parts:
        counts[type(part)] = counts.get(type(part), 0) + 1
        numbered.append(replace(part, number=counts[type(part)]))
    return numbered
