# mypy: disallow-untyped-calls=False
"""What every benchmark shares: timing several runs, their median, a ratio between two
medians measured in the same run, and the machine the figures came from.

These machines are noisy: a figure on its own says little, so every benchmark measures
Drover and the bare stack side by side, several times each, and reports the ratio of
their medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.connection import Connection

__all__ = ["Figure", "Measure", "Runs", "machine", "seconds", "side_by_side", "timed"]


@dataclass(frozen=True)
class Runs:
    """One quantity measured several times (a rate, a duration, a size)."""

    name: str
    unit: str
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Half the range, as a share of the median: how far to trust the median."""
        if not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / 2 / self.median


@dataclass(frozen=True)
class Figure:
    """A benchmark's result: Drover beside the bare stack, and the goal for their ratio."""

    benchmark: str
    drover: Runs
    bare: Runs | None = None
    goal: str = ""  # e.g. ">= 0.5"
    notes: dict[str, Any] = field(default_factory=dict)
    # What the two sides are called where they are printed: a floor is not Drover.
    sides: tuple[str, str] = ("drover", "bare")

    @property
    def ratio(self) -> float | None:
        if self.bare is None or not self.bare.median:
            return None
        return self.drover.median / self.bare.median

    def met(self) -> bool | None:
        """Whether the goal holds; None when there is no goal to hold it to."""
        if not self.goal or self.ratio is None:
            return None
        operator, bound = self.goal.split()
        return self.ratio >= float(bound) if operator == ">=" else self.ratio <= float(bound)


def timed(runs: int, once: Callable[[], float], name: str, unit: str) -> Runs:
    """``once`` ``runs`` times; each call returns its own figure (a rate or a duration)."""
    return Runs(name, unit, tuple(once() for _ in range(runs)))


Measure = tuple[str, str, Callable[[], float]]  # a name, a unit, one measurement


def side_by_side(runs: int, first: Measure, second: Measure) -> tuple[Runs, Runs]:
    """Both measured ``runs`` times in turn, the one that goes first changing each run, so
    that the machine's drift (and any cost of going first) falls on both alike."""
    values: tuple[list[float], list[float]] = ([], [])
    measures = [(first[2], values[0]), (second[2], values[1])]
    for run in range(runs):
        for measure, into in measures if run % 2 == 0 else reversed(measures):
            into.append(measure())
    return (
        Runs(first[0], first[1], tuple(values[0])),
        Runs(second[0], second[1], tuple(values[1])),
    )


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def machine(redis_url: str, amqp_url: str) -> dict[str, Any]:
    """What the figures were measured on, kept beside them."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": _redis_version(redis_url),
        "rabbitmq": _rabbitmq_version(amqp_url),
    }


def _redis_version(url: str) -> str:
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"unreachable ({exc})"


def _rabbitmq_version(url: str) -> str:
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.connect()
            properties = connection.connection.server_properties
            return str(properties.get("version", "?"))
    except OSError as exc:
        return f"unreachable ({exc})"
