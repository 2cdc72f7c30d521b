"""``python -m bench NAME… [--broker redis|rabbitmq] [--runs N] [--json FILE]``.

Each benchmark is a module of this package with ``run(options) -> list[Figure]``; they
are imported only when asked for, so one can run while another is being written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import asdict
from typing import Final

from bench.measure import Figure, machine
from bench.options import Options

BENCHMARKS: Final = {
    "bare": "bench.bare",  # kombu and Celery alone: the ceiling
    "p1": "bench.wide",  # 1,000 independent components
    "p2": "bench.chain",  # 200 components in a chain
    "p3": "bench.big_fleet",  # 5,000 / 10,000 / 20,000 hosts
    "p4": "bench.many",  # 200 releases at once
    "p5": "bench.embedded",  # drover run in one process
    "latency": "bench.latency",  # from one component's end to the next one's command
    "floor": "bench.floor",  # the bare stack doing the least Drover's guarantees ask
    "intake": "bench.intake",  # taking commands off many queues: one per poll, or batched
    "instructions": "bench.instructions",  # one component's cost to the worker, counted
    "fleet": "bench.fleet_file",  # reading a 10,000-host fleet file, as every process starts
    "width": "bench.width",  # one outcome's deciding in a release of 1,000 and of 10,000
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="+", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, for the median")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    args = parser.parse_args()
    options = Options(
        broker=args.broker,
        runs=args.runs,
        redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        amqp_url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    )
    names = list(BENCHMARKS) if "all" in args.names else args.names
    on = machine(options.redis_url, options.amqp_url)
    print(f"machine: {json.dumps(on)}; broker: {options.broker}; runs: {options.runs}")
    figures: list[Figure] = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        for figure in module.run(options):
            figures.append(figure)
            print(_line(figure), flush=True)
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump({"machine": on, "figures": [asdict(f) for f in figures]}, out, indent=2)
    sys.exit(0)


def _line(figure: Figure) -> str:
    drover = f"{figure.drover.median:,.1f} {figure.drover.unit} (±{figure.drover.spread:.0%})"
    if figure.bare is None:
        return f"{figure.benchmark:<28} {drover}"
    bare = f"{figure.bare.median:,.1f} {figure.bare.unit} (±{figure.bare.spread:.0%})"
    met = {True: "met", False: "NOT met", None: ""}[figure.met()]
    ratio = f"ratio {figure.ratio:.2f}" if figure.ratio is not None else ""
    goal = f"goal {figure.goal} {met}" if figure.goal else ""
    first, second = figure.sides
    return f"{figure.benchmark:<28} {first} {drover}  {second} {bare}  {ratio}  {goal}".rstrip()


if __name__ == "__main__":
    main()
