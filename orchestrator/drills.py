"""Crash points: kill this process at a named moment, for drills and the fault suite.

``DROVER_CRASH_AT=coordinator.after_commit:3`` makes the coordinator SIGKILL itself the
third time it has committed a saga step and not yet acknowledged or published anything.
A point may name the release state it applies to (``coordinator.after_commit@compensating``)
and several points are separated by commas. Nothing happens when the variable is unset.

The points are where a crash is hardest to survive:

* ``coordinator.after_commit``  — state and outbox stored; message not acked, nothing sent
* ``coordinator.after_publish`` — an outbox message sent, not yet marked as sent
* ``worker.after_effect``      — a step done on a host, not yet written to the journal
* ``worker.before_ack``        — the outcome published, the command not yet acknowledged
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

__all__ = ["POINTS", "CrashPoints"]

POINTS = frozenset(
    {
        "coordinator.after_commit",
        "coordinator.after_publish",
        "worker.after_effect",
        "worker.before_ack",
    }
)


@dataclass
class _Point:
    name: str
    tag: str | None
    at_count: int
    seen: int = 0


@dataclass
class CrashPoints:
    points: list[_Point] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, spec: str | None) -> CrashPoints:
        points = []
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            where, _, count = item.partition(":")
            name, _, tag = where.partition("@")
            if name not in POINTS:
                # A misspelt point would never fire, and the drill would prove nothing.
                raise ValueError(
                    f"unknown crash point {name!r}; known: {', '.join(sorted(POINTS))}"
                )
            points.append(_Point(name, tag or None, int(count or 1)))
        return cls(points)

    def reached(self, name: str, tag: str | None = None) -> None:
        """Die here, by SIGKILL, if a crash point says so."""
        if not self.points:
            return
        with self._lock:
            for point in self.points:
                if point.name == name and point.tag in (None, tag):
                    point.seen += 1
                    if point.seen == point.at_count:
                        os.kill(os.getpid(), signal.SIGKILL)
