"""P1: one release of many independent components, against Celery's no-op task rate.

A fleet of ``BENCH_P1_COMPONENTS`` (default 1,000) simulated services, one host each and no
latency, and one release that moves them all; one coordinator process and one worker
process with Drover's default concurrency (``BENCH_WORKER_CONCURRENCY``, 4), beside a bare
Celery worker with as many threads. Drover's rate is components per second from the
release's acceptance to its success (both ``occurred_at`` in the timeline); the bare rate
is no-op tasks per second through one queue. Goal: at least half.

Each Drover run has a namespace, processes and fleet of its own, removed afterwards.
"""

from __future__ import annotations

import os
from typing import Final

from bench.bare import CELERY_TASKS, celery_worker
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

__all__ = ["COMPONENTS", "components_per_second", "run"]

COMPONENTS: Final = int(os.environ.get("BENCH_P1_COMPONENTS", "1000"))


def run(options: Options) -> list[Figure]:
    processor: list[dict[str, float]] = []
    with celery_worker(options, WORKER_CONCURRENCY) as worker:
        drover, bare = side_by_side(
            options.runs,
            (
                "components per second",
                "comp/s",
                lambda: components_per_second(options, COMPONENTS, processor),
            ),
            ("celery no-op", "task/s", lambda: worker.rate(CELERY_TASKS)),
        )
    notes = {
        "components": COMPONENTS,
        "worker_concurrency": WORKER_CONCURRENCY,
        "bare_tasks": CELERY_TASKS,
        "seconds_per_release": [round(COMPONENTS / rate, 2) for rate in drover.values],
    }
    wide = Figure(f"p1 wide ({COMPONENTS})", drover, bare, ">= 0.5", notes)
    return [wide, *processor_figures("p1", processor)]


def components_per_second(
    options: Options, count: int, processor: list[dict[str, float]] | None = None
) -> float:
    """The rate of one wide release of ``count``; each role's processor time per
    component goes to ``processor``, if given."""
    services = service_names(count)
    with cluster(options, "p1", dict.fromkeys(services, 1), batch=1) as running:
        path = write_release(running.folder, "wide", services, "2.0.0")
        with running.processor_per_component(count, processor):
            timelines = running.wait_for(running.submit([path]))
    return count / span_seconds(timelines, first="ReleaseAccepted")
