"""Fleet file: what reading a big fleet file costs every Drover process as it starts.

Every worker, the coordinator, ``drover run`` and every command on the command line read
the fleet file before anything else. This reads one fleet of ``BENCH_FLEET_SERVICES``
(1,000) services of ``BENCH_FLEET_HOSTS`` (10) hosts each, written in YAML's block style
as people write it:

* **drover**: ``orchestrator.plans.load_fleet``: the file parsed (by libyaml, where
  PyYAML has it), every key checked to be given once, the whole fleet validated;
* **bare**: ``yaml.safe_load`` of the same file: PyYAML's own parser alone, which a
  Python tool reading YAML uses unless told otherwise (and Drover did until 2026-12-06).

Needs no broker: ``--broker`` is ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Final

import yaml

from bench.measure import Figure, seconds, side_by_side
from bench.options import Options
from bench.processes import service_names, write_fleet
from orchestrator.plans import load_fleet

__all__ = ["run"]

SERVICES: Final = int(os.environ.get("BENCH_FLEET_SERVICES", "1000"))
HOSTS: Final = int(os.environ.get("BENCH_FLEET_HOSTS", "10"))


def run(options: Options) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        path = write_fleet(Path(folder), dict.fromkeys(service_names(SERVICES), HOSTS), batch=5)
        # Written as JSON (flow style) for speed elsewhere; read here as people write it.
        path.write_text(yaml.safe_dump(json.loads(path.read_text()), sort_keys=False))
        drover, bare = side_by_side(
            options.runs,
            ("load_fleet", "ms", lambda: 1000 * seconds(lambda: load_fleet(path))),
            ("yaml.safe_load", "ms", lambda: 1000 * seconds(lambda: _parsed(path))),
        )
        size = path.stat().st_size
    notes = {"services": SERVICES, "hosts_per_service": HOSTS, "file_bytes": size}
    return [Figure(f"fleet file of {SERVICES * HOSTS:,} hosts", drover, bare, notes=notes)]


def _parsed(path: Path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
