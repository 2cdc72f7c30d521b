"""What a release would do, worked out without touching anything (``drover plan``).

Waves in dependency order; per component its strategy unfolded into stages (batches,
bakes, analyses, switch, gates), the approvals it waits for, and what would be undone if
it failed there: its own hosts by its own worker, then the components already deployed,
dependents first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.contract import ComponentRequest, SubmitRelease
from orchestrator.fleet import Fleet, ServiceConfig
from orchestrator.fleet.stages import Analysis, Bake, Batch, Gates, Stage, Switch, stages_of
from orchestrator.fleet.strategies import BlueGreenStrategy, CanaryStrategy, Strategy
from orchestrator.plans import plan_release

__all__ = ["plan_lines", "plan_view"]


def plan_view(fleet: Fleet, request: SubmitRelease) -> dict[str, Any]:
    """The plan as JSON-ready data; raises InvalidInput for a release the fleet refuses."""
    checked = plan_release(fleet, request)
    environment = fleet.environments[request.environment]
    components = {c.name: c for c in request.components}
    waves = [[components[name] for name in wave] for wave in checked.waves]
    return {
        "environment": request.environment,
        "approval": {
            "before_start": request.requires_approval or environment.approval.required,
            "approver_not_requester": environment.approval.separate_approver,
        },
        "waves": [
            [_component(c, environment.services[c.service], waves, index) for c in wave]
            for index, wave in enumerate(waves)
        ],
    }


def _component(
    request: ComponentRequest,
    service: ServiceConfig,
    waves: Sequence[Sequence[ComponentRequest]],
    wave: int,
) -> dict[str, Any]:
    strategy = request.strategy or service.strategy
    flip = request.flag is not None
    return {
        "component": request.name,
        "service": request.service,
        "target": f"{request.flag} {'on' if request.enabled else 'off'}"
        if flip
        else request.version,
        "strategy": "flag flip" if flip else _strategy(strategy, len(service.hosts)),
        "requires_approval": request.requires_approval or service.requires_approval,
        "stages": [] if flip else [_stage(s) for s in stages_of(service, strategy)],
        "if_it_fails": {
            "own": _own_undo(strategy, flip),
            # Already deployed when it fails: every earlier wave, undone last wave first.
            "then_rolled_back": [[c.name for c in w] for w in reversed(waves[:wave])],
            # In flight beside it: undone too, if they finish deploying first.
            "if_they_finish_first": [c.name for c in waves[wave] if c.name != request.name],
        },
    }


def _strategy(strategy: Strategy, hosts: int) -> str:
    if isinstance(strategy, BlueGreenStrategy):
        return f"blue/green (blue {len(strategy.blue)}, green {len(strategy.green)} hosts)"
    floor = strategy.floor(hosts)
    limits = f"batch {strategy.batch_size(hosts)}, min healthy {floor} of {hosts}"
    drain = f"drain up to {strategy.drain_timeout_s:g} s"
    kind = "canary" if isinstance(strategy, CanaryStrategy) else "rolling"
    return f"{kind} ({limits}, {drain})"


def _stage(stage: Stage) -> dict[str, Any]:
    match stage:
        case Batch(number=n, hosts=hosts, drain=drain):
            return {"stage": "batch", "number": n, "hosts": list(hosts), "drain": drain}
        case Bake(number=n, seconds=seconds):
            return {"stage": "bake", "number": n, "seconds": seconds}
        case Analysis(number=n, gates=gates, canary=canary):
            names = [g.name for g in gates]
            return {"stage": "analysis", "number": n, "gates": names, "canary": list(canary)}
        case Switch(to=colour):
            return {"stage": "switch", "to": colour}
        case Gates(gates=gates):
            return {"stage": "gates", "gates": [g.name for g in gates]}
    raise TypeError(f"unknown stage {stage!r}")


def _own_undo(strategy: Strategy, flip: bool) -> str:
    if flip:
        return "the flag is left as it was"
    if isinstance(strategy, BlueGreenStrategy):
        return "traffic is switched back if it moved; the idle colour is left as it is"
    return "its worker puts back the hosts of the batches done so far, last batch first"


def plan_lines(view: dict[str, Any]) -> Iterator[str]:
    """The plan for a person to read."""
    count = sum(len(w) for w in view["waves"])
    yield f"release to {view['environment']}: {count} components in {len(view['waves'])} waves"
    approval = view["approval"]
    if approval["before_start"]:
        other = (
            " from someone other than the requester" if approval["approver_not_requester"] else ""
        )
        yield f"  waits for an approval{other} before it starts"
    for number, wave in enumerate(view["waves"], start=1):
        yield f"wave {number}"
        for component in wave:
            yield from _component_lines(component)


def _component_lines(component: dict[str, Any]) -> Iterator[str]:
    yield f"  {component['component']} -> {component['target']}  {component['strategy']}"
    if component["requires_approval"]:
        yield "    waits for an approval before it starts"
    for stage in component["stages"]:
        yield "    " + _stage_line(stage)
    fails = component["if_it_fails"]
    undone = "; ".join(", ".join(wave) for wave in fails["then_rolled_back"]) or "nothing else"
    yield f"    if it fails: {fails['own']}; then rolled back: {undone}"
    if fails["if_they_finish_first"]:
        yield f"      (and, if they finish first: {', '.join(fails['if_they_finish_first'])})"


def _stage_line(stage: dict[str, Any]) -> str:
    match stage["stage"]:
        case "batch":
            how = "" if stage["drain"] else " (idle colour: no drain)"
            return f"batch {stage['number']}: {', '.join(stage['hosts'])}{how}"
        case "bake":
            return f"bake {stage['seconds']:g} s"
        case "analysis":
            canary = ", ".join(stage["canary"])
            return f"analysis {stage['number']} (canary {canary} against the rest): " + ", ".join(
                stage["gates"]
            )
        case "switch":
            return f"switch traffic to {stage['to']} (the idle colour, when the other serves)"
    return "gates: " + ", ".join(stage["gates"])
