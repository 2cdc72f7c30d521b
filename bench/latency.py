"""The coordinator's reaction time: from a component's completion to the next one's command.

Over a chain release (``BENCH_P2_COMPONENTS``, default 200, the services' second: see
:mod:`bench.chain`), each ``DeployComponent`` after the first was caused by the previous
component's ``ComponentDeployed``; the gap between their ``occurred_at`` (one stamped by
the worker as it reported, the other by the coordinator as it decided) is the event's
trip over the broker, the coordinator's queue ahead of it, one load, decide and the start
of the commit. p50 and p99 per run, the median over runs.

The reference is the Celery round trip (:func:`bench.bare.celery_round_trip`), with no
goal: the ratio says what share of a whole task-and-reply exchange the coordinator's
reaction alone takes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.bare import celery_round_trip
from bench.chain import COMPONENTS, chain_timelines
from bench.measure import Figure, Runs
from bench.options import Options
from bench.processes import WORKER_CONCURRENCY
from orchestrator.contract import Envelope

__all__ = ["reaction_times_ms", "run"]


def run(options: Options) -> list[Figure]:
    bare = celery_round_trip(options, concurrency=WORKER_CONCURRENCY)
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(options.runs):
        _, again = chain_timelines(options, COMPONENTS)
        gaps = reaction_times_ms(again)
        cuts = statistics.quantiles(gaps, n=100, method="inclusive")
        p50s.append(cuts[49])
        p99s.append(cuts[98])
    notes = {"components": COMPONENTS, "reference": "celery round trip p50, no goal"}
    return [
        Figure(
            "latency p50", Runs("deployed to next command p50", "ms", tuple(p50s)), bare, "", notes
        ),
        Figure(
            "latency p99", Runs("deployed to next command p99", "ms", tuple(p99s)), bare, "", notes
        ),
    ]


def reaction_times_ms(timeline: Sequence[Envelope]) -> list[float]:
    """For every DeployComponent caused by a ComponentDeployed: ms between the two."""
    deployed = {m.id: m.occurred_at for m in timeline if m.type == "ComponentDeployed"}
    return [
        (m.occurred_at - deployed[m.causation_id]).total_seconds() * 1000
        for m in timeline
        if m.type == "DeployComponent" and m.causation_id in deployed
    ]
