"""A randomized soak: releases one after another, with kills at random moments.

    python -m tests.faults.soak --releases 50 --seed 1234 [--broker redis|rabbitmq] [--logs DIR]

Each release is, at random, one that succeeds or one that must be rolled back. While it
runs, the soak may kill -9 a worker, the coordinator, or both, at a random moment, and
start them again. After each release every invariant of the fault suite is checked. The
seed is printed first, so any failure can be replayed with the same kills in the same
places (the timing of processes is not replayed; the choices are).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.plans import load_fleet
from orchestrator.saga import ReleaseStatus
from orchestrator.store import open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.faults.invariants import check_invariants, versions_now, wait_until_ended
from tests.faults.test_faults import FAST, FLEET_FILE, TWO_WORKERS, submit

VICTIMS = (("worker-1",), ("worker-2",), ("coordinator",), ("coordinator", "worker-1"))


@dataclass
class Tally:
    releases: int = 0
    kills: int = 0
    failures: list[str] = field(default_factory=list)


def release_for(number: int, chooser: random.Random) -> tuple[list[dict[str, Any]], ReleaseStatus]:
    version = f"{number + 10}.0.0"
    if chooser.random() < 0.5:
        components = [
            {"service": "db", "version": version},
            {"service": "api", "version": version, "depends_on": ["db"]},
            {"service": "web", "version": version, "depends_on": ["api"]},
            {"service": "cache", "version": version},
        ]
        return components, ReleaseStatus.SUCCEEDED
    components = [
        {"service": "db", "version": version},
        {"service": "cache", "version": version},
        {"service": "api", "version": "6.6.6-broken", "depends_on": ["db"]},
        {"service": "web", "version": version, "depends_on": ["api", "cache"]},
    ]
    return components, ReleaseStatus.ROLLED_BACK


def soak(releases: int, seed: int, broker: str, logs: Path) -> Tally:
    chooser = random.Random(seed)
    fleet = load_fleet(FLEET_FILE)
    tally = Tally()
    with running_cluster(broker, logs, fleet=FLEET_FILE, workers=TWO_WORKERS, **FAST) as cluster:
        store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
        try:
            for number in range(releases):
                components, expected = release_for(number, chooser)
                before = versions_now(fleet, store)
                release_id = submit(cluster, logs, components)
                tally.kills += _maybe_kill(cluster, chooser)
                try:
                    ended = wait_until_ended(store, release_id, timeout_s=180)
                    check_invariants(store, fleet, ended, before, expected)
                except AssertionError as failure:
                    tally.failures.append(f"{release_id} (release {number}): {failure}")
                tally.releases += 1
                print(f"  {number + 1}/{releases} {release_id} done", flush=True)
        finally:
            store.close()
    return tally


def _maybe_kill(cluster: Cluster, chooser: random.Random) -> int:
    """Now and then, kill -9 some of Drover's processes mid-release, and restart them."""
    if chooser.random() < 0.3:
        return 0
    time.sleep(chooser.uniform(0.0, 3.0))
    victims = chooser.choice(VICTIMS)
    for name in victims:
        cluster.kill(name)
    time.sleep(chooser.uniform(0.0, 1.0))
    for name in victims:
        cluster.restart(name)
    return len(victims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--releases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep every process's log here (default: none)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(f"soak: seed {seed}, {args.releases} releases over {args.broker}", flush=True)
    started = time.monotonic()
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        tally = soak(args.releases, seed, args.broker, args.logs)
    else:
        with tempfile.TemporaryDirectory(prefix="drover-soak-") as scratch:
            tally = soak(args.releases, seed, args.broker, Path(scratch))
    minutes = (time.monotonic() - started) / 60
    print(
        f"soak: seed {seed}: {tally.releases} releases, {tally.kills} processes killed, "
        f"{len(tally.failures)} failures, {minutes:.1f} min"
    )
    for failure in tally.failures:
        print(f"  FAILED {failure}")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
