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

from bench.bare import CELERY_TASKS, celery_noop_rate
from bench.drover_run import WORKER_CONCURRENCY, between, drover_processes, independent
from bench.measure import Figure, timed
from bench.options import Options

__all__ = ["COMPONENTS", "components_per_second", "run"]

COMPONENTS: Final = int(os.environ.get("BENCH_P1_COMPONENTS", "1000"))


def run(options: Options) -> list[Figure]:
    bare = celery_noop_rate(options, concurrency=WORKER_CONCURRENCY)
    drover = timed(
        options.runs,
        lambda: components_per_second(options, COMPONENTS),
        "components per second",
        "comp/s",
    )
    notes = {
        "components": COMPONENTS,
        "worker_concurrency": WORKER_CONCURRENCY,
        "bare_tasks": CELERY_TASKS,
        "seconds_per_release": [round(COMPONENTS / rate, 2) for rate in drover.values],
    }
    return [Figure(f"p1 wide ({COMPONENTS})", drover, bare, ">= 0.5", notes)]


def components_per_second(options: Options, count: int) -> float:
    with drover_processes(options, count) as drover:
        timeline = drover.run_release(drover.release_file(independent(count), "2.0.0"))
    return count / between(timeline, "ReleaseAccepted", "ReleaseSucceeded")
