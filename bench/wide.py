"""P1: one release of many independent components, against Celery's no-op task rate.

A fleet of ``BENCH_P1_COMPONENTS`` (default 1,000) simulated services, one host each and no
latency, and one release that moves them all; one coordinator process and one worker
process with Drover's default concurrency (``BENCH_WORKER_CONCURRENCY``, 4), beside a bare
Celery worker with as many threads. Drover's rate is components per second from the
release's acceptance to its success (both ``occurred_at`` in the timeline), measured on the
services' second release (:meth:`bench.processes.Cluster.first_and_again`: a fleet's
queues outlive its releases), their first printed beside it; the bare rate is no-op tasks
per second through one queue. Goal: at least half.

Each Drover run has a namespace, processes and fleet of its own, removed afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from bench.bare import CELERY_TASKS, CeleryWorker, celery_worker
from bench.measure import Figure, Runs, side_by_side
from bench.options import Options
from bench.processes import (
    WORKER_CONCURRENCY,
    cluster,
    processor_figures,
    processor_per,
    servers,
    service_names,
    span_seconds,
)

__all__ = ["COMPONENTS", "components_per_second", "run"]

COMPONENTS: Final = int(os.environ.get("BENCH_P1_COMPONENTS", "1000"))


def run(options: Options) -> list[Figure]:
    processor: list[dict[str, float]] = []
    bare_processor: list[dict[str, float]] = []
    first: list[float] = []
    at_work = servers(options)
    with celery_worker(options, WORKER_CONCURRENCY) as worker:
        drover, bare = side_by_side(
            options.runs,
            (
                "components per second",
                "comp/s",
                lambda: components_per_second(options, COMPONENTS, processor, first),
            ),
            ("celery no-op", "task/s", lambda: _celery_rate(worker, at_work, bare_processor)),
        )
    notes = {
        "components": COMPONENTS,
        "worker_concurrency": WORKER_CONCURRENCY,
        "bare_tasks": CELERY_TASKS,
        "seconds_per_release": [round(COMPONENTS / rate, 2) for rate in drover.values],
    }
    wide = Figure(f"p1 wide ({COMPONENTS})", drover, bare, ">= 0.5", notes)
    first_release = Figure(
        f"p1 wide ({COMPONENTS}), first release",
        Runs("components per second, the services' first release", "comp/s", tuple(first)),
        bare,
        notes={"components": COMPONENTS},
    )
    return [
        wide,
        first_release,
        *processor_figures("p1", processor),
        *processor_figures("p1 celery no-op", bare_processor, per="task"),
    ]


def _celery_rate(
    worker: CeleryWorker, at_work: Mapping[str, int], processor: list[dict[str, float]]
) -> float:
    """Celery's no-op rate; the bare worker's and each server's processor time per task
    goes to ``processor``: Drover's worker's per component stands beside the first."""
    with processor_per({"worker": worker.pid, **at_work}, CELERY_TASKS, processor):
        return worker.rate(CELERY_TASKS)


def components_per_second(
    options: Options,
    count: int,
    processor: list[dict[str, float]],
    first: list[float],
) -> float:
    """The rate of a wide release of ``count`` services released once before; each role's
    processor time per component goes to ``processor``, the rate of their first release
    to ``first``."""
    services = service_names(count)
    with cluster(options, "p1", dict.fromkeys(services, 1), batch=1) as running:
        first_timeline, timeline = running.first_and_again("wide", services, processor=processor)
    first.append(count / span_seconds([first_timeline], first="ReleaseAccepted"))
    return count / span_seconds([timeline], first="ReleaseAccepted")
