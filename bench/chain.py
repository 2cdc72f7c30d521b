"""P2: a release of components in a chain, each depending on the one before it, against
one Celery round trip.

``BENCH_P2_COMPONENTS`` (default 200) simulated services, one host each and no latency,
one coordinator and one worker process. Only one component can be in flight at a time,
so the time per component is Drover's round trip: the coordinator hears a component is
deployed, commits, sends the next command, and the worker carries it out and reports.
It is measured on the services' second release (a fleet's queues outlive its releases:
:meth:`bench.processes.Cluster.first_and_again`), their first printed beside it. The bare
figure is the p50 of a Celery task sent and its reply received. Goal: at most twice that.

Where a component's time goes is printed beside it, from the moments its messages were
made (``occurred_at``, one clock: both processes run on this machine), medians over the
chain: from the coordinator's command to the worker's ``ComponentStarted`` (the commit,
the command's way to the worker, its claim and the hosts' versions read), from that to
its outcome (the steps), and from the outcome to the next component's command (the
outcome's way to the coordinator, its deciding).
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from bench.bare import ROUND_TRIPS, celery_worker
from bench.measure import Figure, Runs, side_by_side
from bench.options import Options
from bench.processes import (
    WORKER_CONCURRENCY,
    cluster,
    processor_figures,
    service_names,
    span_seconds,
)
from orchestrator.contract import Envelope

__all__ = ["COMPONENTS", "chain_timelines", "run"]

COMPONENTS: Final = int(os.environ.get("BENCH_P2_COMPONENTS", "200"))
# A component's way, as the moments its messages were made mark it: each leg from a
# message of the component to one of its own, or of the next component in the chain.
_LEGS: Final = (
    ("command to start", "DeployComponent", "ComponentStarted", False),
    ("start to outcome", "ComponentStarted", "ComponentDeployed", False),
    ("outcome to next command", "ComponentDeployed", "DeployComponent", True),
)


def run(options: Options) -> list[Figure]:
    processor: list[dict[str, float]] = []
    legs: list[dict[str, float]] = []
    first: list[float] = []
    with celery_worker(options, WORKER_CONCURRENCY) as worker:
        drover, bare = side_by_side(
            options.runs,
            (
                "time per component",
                "ms",
                lambda: _ms_per_component(options, processor, legs, first),
            ),
            (
                "celery round trip p50",
                "ms",
                lambda: worker.round_trip(options.broker_url, ROUND_TRIPS),
            ),
        )
    notes = {"components": COMPONENTS, "worker_concurrency": WORKER_CONCURRENCY}
    chain = Figure(f"p2 chain ({COMPONENTS})", drover, bare, "<= 2", notes)
    first_release = Figure(
        f"p2 chain ({COMPONENTS}), first release",
        Runs("time per component, the services' first release", "ms", tuple(first)),
        bare,
        notes={"components": COMPONENTS},
    )
    return [chain, first_release, *processor_figures("p2", processor), *_leg_figures(legs)]


def _ms_per_component(
    options: Options,
    processor: list[dict[str, float]],
    legs: list[dict[str, float]],
    first: list[float],
) -> float:
    first_timeline, timeline = chain_timelines(options, COMPONENTS, processor)
    first.append(_ms(first_timeline))
    legs.append(_legs_ms(timeline))
    return _ms(timeline)


def _ms(timeline: Sequence[Envelope]) -> float:
    return span_seconds([timeline], first="ReleaseAccepted") / COMPONENTS * 1000


def _legs_ms(timeline: Sequence[Envelope]) -> dict[str, float]:
    """Each leg's median over the chain, in ms (the first component's, which waits for
    the release to start, and the last's, which has no next, left out)."""
    made: dict[str, dict[str, datetime]] = {}
    for message in timeline:
        service = getattr(message.payload, "service", None)
        if service is not None:
            made.setdefault(service, {}).setdefault(message.type, message.occurred_at)
    order = list(made)  # the services as their first messages came: the chain's order
    medians = {}
    for leg, first, last, in_next in _LEGS:
        ms = []
        for this, after in itertools.pairwise(order[1:]):
            end = after if in_next else this
            if first in made[this] and last in made[end]:
                ms.append((made[end][last] - made[this][first]).total_seconds() * 1000)
        medians[leg] = statistics.median(ms)
    return medians


def _leg_figures(per_run: Sequence[dict[str, float]]) -> list[Figure]:
    return [
        Figure(
            f"p2 {leg}", Runs(f"{leg}, median over the chain", "ms", tuple(r[leg] for r in per_run))
        )
        for leg, *_ in _LEGS
    ]


def chain_timelines(
    options: Options, count: int, processor: list[dict[str, float]] | None = None
) -> tuple[list[Envelope], list[Envelope]]:
    """The timelines of a chain release of ``count`` components on fresh processes, the
    services' first, and of the same chain again; each role's processor time per
    component over the second goes to ``processor``, if given."""
    services = service_names(count)
    with cluster(options, "p2", dict.fromkeys(services, 1), batch=1) as running:
        return running.first_and_again("chain", services, chained=True, processor=processor)
