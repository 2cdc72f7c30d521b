"""P4: many releases at once, beside one wide release of as many components.

200 releases of 5 components each (``BENCH_P4_RELEASES``, ``BENCH_P4_COMPONENTS``) are
submitted together, each over services no other release touches, so that no release
waits in a lock queue behind another: what is measured is the coordinator juggling many
sagas, not the locks serialising them (a lock is per service and environment, so
releases over distinct services never queue). The reference is one release of all
1,000 components over the same fleet, measured in the same run.

Both sides: a fleet of one-host simulated services with no latency (as P1's), a fresh
coordinator and one worker process, warmed up; components per second from the first
submission to the last release's end, as the timeline has them. The sides take turns
going first, run by run, so that neither always meets a warmer or a busier machine.
Goal: many releases reach at least 0.8 of the wide release's rate.
"""

from __future__ import annotations

import os
from typing import Final

from bench.measure import Figure, side_by_side
from bench.options import Options
from bench.processes import cluster, service_names, span_seconds, write_release

__all__ = ["run"]

RELEASES: Final = int(os.environ.get("BENCH_P4_RELEASES", "200"))
PER_RELEASE: Final = int(os.environ.get("BENCH_P4_COMPONENTS", "5"))
TIMEOUT_S: Final = float(os.environ.get("BENCH_P4_TIMEOUT_S", "1800"))
GOAL: Final = ">= 0.8"


def run(options: Options) -> list[Figure]:
    services = service_names(RELEASES * PER_RELEASE)
    many, wide = side_by_side(
        options.runs,
        (f"{RELEASES} releases of {PER_RELEASE}", "comp/s", lambda: _many_rate(options, services)),
        (f"one release of {len(services)}", "comp/s", lambda: _wide_rate(options, services)),
    )
    return [
        Figure(
            f"p4 many ({RELEASES}x{PER_RELEASE})",
            many,
            wide,
            GOAL,
            {
                "seconds_many": [round(len(services) / r, 2) for r in many.values],
                "seconds_wide": [round(len(services) / r, 2) for r in wide.values],
                "hosts_per_service": 1,
            },
        )
    ]


def _many_rate(options: Options, services: list[str]) -> float:
    groups = [services[i : i + PER_RELEASE] for i in range(0, len(services), PER_RELEASE)]
    return _rate(options, "p4-many", services, groups)


def _wide_rate(options: Options, services: list[str]) -> float:
    return _rate(options, "p4-wide", services, [services])


def _rate(options: Options, tag: str, services: list[str], groups: list[list[str]]) -> float:
    """Components per second for ``groups`` (one release each) submitted together."""
    fleet = dict.fromkeys(services, 1)
    with cluster(options, tag, fleet, batch=1) as running:
        # Written and read before the clock starts: only the submissions themselves count.
        paths = [
            write_release(running.folder, f"r{i}", group, "2.0.0") for i, group in enumerate(groups)
        ]
        timelines = running.wait_for(running.submit(paths), TIMEOUT_S)
    return len(services) / span_seconds(timelines)
