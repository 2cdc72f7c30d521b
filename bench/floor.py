"""The floor: the bare stack doing the least that Drover's guarantees ask of a component.

P1 and P2 divide Drover by a Celery no-op, which keeps no record of anything. A Drover
component is leased, journaled and recorded so that a crash at any point loses nothing and
repeats no effect (``docs/reliability.md``). This benchmark prices those records alone:
a bare Celery task that makes the store calls a one-host component needs at the very
least, each the cheapest durable write there is (one key set in one Lua call), then
publishes its outcome, and does nothing else: no decoding, no events, no logic.

The least a one-host component (drain, deploy, verify, undrain) needs, had every call
that can be merged been merged:

1. take the lease, with whether the command finished before and the release's wanted state;
2. read what the hosts run, before any change;
3. record that, with the first step's start, before the first change;
4. to 6. the three changes to the host: drained, deployed, undrained (the simulator's
   host lives in the store; a real host is a call of its own);
7. and 8. the journal: drained before deploying, deployed (and verified) before undraining;
9. the outcome recorded (with the last journal entry and reports), the lease let go;

then the outcome published: :data:`WORKER_STORE_CALLS` calls and one message. The
coordinator, for each component, records the event with the new state and the next
command in one call, and marks the command sent in another (:data:`COORDINATOR_STORE_CALLS`).

Figures, each side by side with its reference, run by run:

* P1's shape: floor components per second through one queue, and through as many queues
  as P1's release has services (a worker serving a thousand services polls a thousand
  queues), against Celery's no-op through one queue, P1's reference; and the no-op
  through those many queues, to show what the queues alone cost;
* P2's shape: the round trip of a floor component with the coordinator's calls before
  each command, against Celery's round trip, P2's reference;
* on Redis, P1's shape with the floor's worker on Drover's transport
  (:mod:`orchestrator.redis_transport`: a take brings as many commands as the worker has
  free slots) beside the same on kombu's: how far the batched intake moves the floor.

A Drover figure above its floor's ratio would be impossible; one near it has little left
to remove but the guarantees themselves.
"""

from __future__ import annotations

import os
from typing import Final

from bench.bare import CELERY_TASKS, DROVERS, ROUND_TRIPS, celery_worker
from bench.measure import Figure, side_by_side
from bench.options import Options
from bench.wide import COMPONENTS

__all__ = ["COORDINATOR_STORE_CALLS", "WORKER_STORE_CALLS", "run"]

WORKER_STORE_CALLS: Final = int(os.environ.get("BENCH_FLOOR_WORKER_CALLS", "9"))
COORDINATOR_STORE_CALLS: Final = int(os.environ.get("BENCH_FLOOR_COORDINATOR_CALLS", "2"))


def run(options: Options) -> list[Figure]:
    tasks = CELERY_TASKS
    with celery_worker(options) as worker:
        noop, floor = side_by_side(
            options.runs,
            ("celery no-op, 1 queue", "task/s", lambda: worker.rate(tasks)),
            ("floor, 1 queue", "comp/s", lambda: worker.rate(tasks, WORKER_STORE_CALLS)),
        )
        trip, floor_trip = side_by_side(
            options.runs,
            (
                "celery round trip p50",
                "ms",
                lambda: worker.round_trip(options.broker_url, ROUND_TRIPS),
            ),
            (
                "floor round trip p50",
                "ms",
                lambda: worker.round_trip(
                    options.broker_url, ROUND_TRIPS, WORKER_STORE_CALLS, COORDINATOR_STORE_CALLS
                ),
            ),
        )
    with celery_worker(options, queues=COMPONENTS) as wide:
        noop_wide, floor_wide = side_by_side(
            options.runs,
            (f"celery no-op, {COMPONENTS} queues", "task/s", lambda: wide.rate(tasks)),
            (f"floor, {COMPONENTS} queues", "comp/s", lambda: wide.rate(tasks, WORKER_STORE_CALLS)),
        )
    notes = {
        "worker_store_calls": WORKER_STORE_CALLS,
        "coordinator_store_calls": COORDINATOR_STORE_CALLS,
        "tasks": tasks,
    }
    floor_sides = ("floor", "celery")
    figures = [
        Figure("floor p1 shape, 1 queue", floor, noop, notes=notes, sides=floor_sides),
        Figure(
            f"floor p1 shape, {COMPONENTS} queues", floor_wide, noop, notes=notes, sides=floor_sides
        ),
        Figure(
            f"no-op over {COMPONENTS} queues", noop_wide, noop, sides=("many queues", "one queue")
        ),
        Figure("floor p2 shape", floor_trip, trip, notes=notes, sides=floor_sides),
    ]
    if options.broker == "redis":
        figures.append(_with_drovers_intake(options, tasks, notes))
    return figures


def _with_drovers_intake(options: Options, tasks: int, notes: dict[str, int]) -> Figure:
    """P1's shape, the floor's worker on Drover's transport (its batched intake) beside
    the same on kombu's: how far the intake moves the floor."""
    with (
        celery_worker(options, queues=COMPONENTS) as kombus,
        celery_worker(options, queues=COMPONENTS, transport=DROVERS) as drovers,
    ):
        batched, one_by_one = side_by_side(
            options.runs,
            ("floor, Drover's intake", "comp/s", lambda: drovers.rate(tasks, WORKER_STORE_CALLS)),
            ("floor, kombu's", "comp/s", lambda: kombus.rate(tasks, WORKER_STORE_CALLS)),
        )
    return Figure(
        f"floor p1 shape, {COMPONENTS} queues, Drover's intake",
        batched,
        one_by_one,
        notes=notes,
        sides=("drover's intake", "kombu's"),
    )
