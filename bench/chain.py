"""P2: a release of components in a chain, each depending on the one before it, against
one Celery round trip.

``BENCH_P2_COMPONENTS`` (default 200) simulated services, one host each and no latency,
one coordinator and one worker process. Only one component can be in flight at a time,
so the time per component is Drover's round trip: the coordinator hears a component is
deployed, commits, sends the next command, and the worker carries it out and reports.
The bare figure is the p50 of a Celery task sent and its reply received. Goal: at most
twice that.
"""

from __future__ import annotations

import os
from typing import Final

from bench.bare import ROUND_TRIPS, celery_worker
from bench.measure import Figure, side_by_side
from bench.options import Options
from bench.processes import (
    WORKER_CONCURRENCY,
    cluster,
    processor_figures,
    service_names,
    span_seconds,
    write_release,
)
from orchestrator.contract import Envelope

__all__ = ["COMPONENTS", "chain_timeline", "run"]

COMPONENTS: Final = int(os.environ.get("BENCH_P2_COMPONENTS", "200"))


def run(options: Options) -> list[Figure]:
    processor: list[dict[str, float]] = []
    with celery_worker(options, WORKER_CONCURRENCY) as worker:
        drover, bare = side_by_side(
            options.runs,
            ("time per component", "ms", lambda: _ms_per_component(options, processor)),
            (
                "celery round trip p50",
                "ms",
                lambda: worker.round_trip(options.broker_url, ROUND_TRIPS),
            ),
        )
    notes = {"components": COMPONENTS, "worker_concurrency": WORKER_CONCURRENCY}
    chain = Figure(f"p2 chain ({COMPONENTS})", drover, bare, "<= 2", notes)
    return [chain, *processor_figures("p2", processor)]


def _ms_per_component(options: Options, processor: list[dict[str, float]]) -> float:
    timeline = chain_timeline(options, COMPONENTS, processor)
    return span_seconds([timeline], first="ReleaseAccepted") / COMPONENTS * 1000


def chain_timeline(
    options: Options, count: int, processor: list[dict[str, float]] | None = None
) -> list[Envelope]:
    """The timeline of one chain release of ``count`` components, on fresh processes;
    each role's processor time per component goes to ``processor``, if given."""
    services = service_names(count)
    with cluster(options, "p2", dict.fromkeys(services, 1), batch=1) as running:
        path = write_release(running.folder, "chain", services, "2.0.0", chained=True)
        with running.processor_per_component(count, processor):
            [timeline] = running.wait_for(running.submit([path]))
    return timeline
