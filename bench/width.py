"""Width: what one outcome costs the coordinator's deciding, as a release widens.

After every outcome the coordinator decides (``orchestrator.saga.decide``) and prepares
its commit: which components changed, their records, the release's next wake-up. None
of it should cost more for a wider release: an outcome touches one component and the
few that follow it. Measured in this process, without a broker or a store (their round
trips are the same at any width), for releases of ``BENCH_WIDTH_COMPONENTS`` (1,000 and
10,000) one-host components:

* **wide**: independent components, each reporting it is deployed;
* **chain rollback**: a chain of components, all deployed but the last, which fails;
  then each is reported rolled back, last first, as compensation undoes them.

Each prints microseconds per outcome (the mean over ``BENCH_WIDTH_OUTCOMES``, 1,000)
at the widest beside the narrowest: their ratio is how much an outcome's cost grows
with the release's width (1.0: not at all). No goal: P3 holds the whole system to its
linearity; this says which part of it the coordinator's deciding is.

Needs no broker: ``--broker`` is ignored.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bench.measure import Figure, Runs
from bench.options import Options
from bench.processes import ENVIRONMENT, service_names, write_fleet
from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRequest,
    ComponentRolledBack,
    Message,
    StartRelease,
    SubmitRelease,
    envelope,
)
from orchestrator.coordinator import _changed_components, _wake_time
from orchestrator.fleet import Fleet
from orchestrator.plans import load_fleet
from orchestrator.saga import ReleaseState, decide
from orchestrator.store.shared import release_record

__all__ = ["run"]

WIDTHS: Final = [int(w) for w in os.environ.get("BENCH_WIDTH_COMPONENTS", "1000,10000").split(",")]
OUTCOMES: Final = int(os.environ.get("BENCH_WIDTH_OUTCOMES", "1000"))

# A release at the moment measuring starts, and the outcomes then measured.
Scenario = Callable[[Fleet, Sequence[str]], tuple[ReleaseState, list[Message]]]


def run(options: Options) -> list[Figure]:
    narrow, wide = min(WIDTHS), max(WIDTHS)
    figures = []
    for name, scenario in (("wide", _wide), ("chain rollback", _chain_rollback)):
        per_width: dict[int, list[float]] = {w: [] for w in (narrow, wide)}
        for _ in range(options.runs):
            for width in (narrow, wide):  # in turns: the machine's drift falls on both
                per_width[width].append(_us_per_outcome(width, scenario))
        figures.append(
            Figure(
                f"width {name}",
                Runs(f"{wide:,} components", "us/outcome", tuple(per_width[wide])),
                Runs(f"{narrow:,} components", "us/outcome", tuple(per_width[narrow])),
                notes={"outcomes": OUTCOMES},
                sides=(f"{wide:,}", f"{narrow:,}"),
            )
        )
    return figures


def _us_per_outcome(width: int, scenario: Scenario) -> float:
    services = service_names(width)
    with tempfile.TemporaryDirectory(prefix="bench-width-") as folder:
        fleet = load_fleet(write_fleet(Path(folder), dict.fromkeys(services, 1), batch=1))
    state, outcomes = scenario(fleet, services)
    started = time.perf_counter()
    for outcome in outcomes:
        state = _decided(state, outcome, fleet)
    return (time.perf_counter() - started) / len(outcomes) * 1e6


def _decided(state: ReleaseState, payload: Message, fleet: Fleet) -> ReleaseState:
    """``state`` after ``payload``, with what the coordinator prepares to commit it: its
    own steps between its decision and its store call, called as they are (a copy here
    could drift from them)."""
    decision = decide(state, envelope(payload, release_id="width", actor="bench"), fleet)
    after = decision.state
    assert after is not None
    if after != state:
        release_record(after, _changed_components(state, after))
        _wake_time(after)
    return after


def _started(fleet: Fleet, requests: Sequence[ComponentRequest]) -> ReleaseState:
    submitted = SubmitRelease(environment=ENVIRONMENT, reason="bench", components=tuple(requests))
    state = decide(None, envelope(submitted, release_id="width", actor="bench"), fleet).state
    assert state is not None
    return _decided(state, StartRelease(), fleet)


def _wide(fleet: Fleet, services: Sequence[str]) -> tuple[ReleaseState, list[Message]]:
    state = _started(fleet, [ComponentRequest(service=s, version="2.0.0") for s in services])
    return state, [_deployed(s) for s in services[:OUTCOMES]]


def _chain_rollback(fleet: Fleet, services: Sequence[str]) -> tuple[ReleaseState, list[Message]]:
    requests = [
        ComponentRequest(service=s, version="2.0.0", depends_on=tuple(services[i - 1 : i]))
        for i, s in enumerate(services)
    ]
    state = _started(fleet, requests)
    for service in services[:-1]:
        state = _decided(state, _deployed(service), fleet)
    last = services[-1]
    failed = ComponentFailed(
        environment=ENVIRONMENT, service=last, version="2.0.0", reason="bench", restored=True
    )
    state = _decided(state, failed, fleet)
    undone = list(reversed(services[:-1]))[:OUTCOMES]
    return state, [
        ComponentRolledBack(environment=ENVIRONMENT, service=s, to_versions={}) for s in undone
    ]


def _deployed(service: str) -> ComponentDeployed:
    previous = {f"{service}-h000": "1.0.0"}
    return ComponentDeployed(
        environment=ENVIRONMENT, service=service, version="2.0.0", previous_versions=previous
    )
