"""The live feed: a worker's step reports, published for listeners a few times a second.

The reports are on record before this sees them (the release's timeline in the store,
which the coordinator and ``drover watch`` read); the feed is for listeners that want
them as they come, a dashboard's queue bound to ``ns.progress``. A person cannot follow
more than a few updates a second, and a publish costs a worker about as much as one of
its steps, so the reports are gathered and sent every ``every_s`` seconds, one message
per release with its reports in the order they were made, by a thread of the feed's own.
Before, every recorded batch was a publish: five for a one-host component.

What a publish that fails loses is said in the log, never raised into the step that
made the report: the timeline holds every report anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Final

from orchestrator.contract import Envelope
from orchestrator.observability import get_logger

__all__ = ["ProgressFeed"]

log = get_logger(__name__)

# One message holds at most this many reports: a wide release's burst is a few messages.
_MOST_PER_MESSAGE: Final = 500
# What waits while publishing fails (a broker away) is bounded; the oldest go first.
_MOST_WAITING: Final = 20_000


class ProgressFeed:
    """Gathers step reports and hands them to ``send``, per release and in order, every
    ``every_s`` seconds while there are any; :meth:`close` sends what is left."""

    def __init__(self, send: Callable[[Sequence[Envelope]], None], every_s: float):
        self._send = send
        self._every_s = every_s
        self._waiting: dict[str, list[Envelope]] = {}  # per release, in the order made
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._offered = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, reports: Sequence[Envelope]) -> None:
        """Reports of one release, to be published with the next message of the feed."""
        if not reports:
            return
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("the progress feed is closed")
            self._waiting.setdefault(reports[0].release_id, []).extend(reports)
            self._count += len(reports)
            if self._count > _MOST_WAITING:
                self._drop_oldest(self._count - _MOST_WAITING)
            if self._thread is None:  # started on first use: most processes never report
                self._thread = threading.Thread(
                    target=self._publish_until_closed, name="drover-progress-feed", daemon=True
                )
                self._thread.start()
            self._offered.notify()

    def close(self) -> None:
        """Stop the feed's thread and publish what is still waiting."""
        with self._lock:
            self._closing.set()
            self._offered.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._publish_waiting()

    def _publish_until_closed(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                while not self._waiting and not self._closing.is_set():
                    self._offered.wait()
            # The reports made meanwhile go with these: that gathering is the point.
            self._closing.wait(self._every_s)
            self._publish_waiting()

    def _publish_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting, self._count = self._waiting, {}, 0
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning(
                "live feed: reports dropped while publishing failed; the timeline has them",
                dropped=dropped,
            )
        for release_id, reports in waiting.items():
            for start in range(0, len(reports), _MOST_PER_MESSAGE):
                part = reports[start : start + _MOST_PER_MESSAGE]
                try:
                    self._send(part)
                except Exception as exc:  # the feed goes on with the next ones
                    log.warning(
                        "live feed: reports not published; the timeline has them",
                        release_id=release_id,
                        reports=len(part),
                        error=str(exc),
                    )

    def _drop_oldest(self, excess: int) -> None:
        for release_id in list(self._waiting):
            reports = self._waiting[release_id]
            gone = min(excess, len(reports))
            del reports[:gone]
            if not reports:
                del self._waiting[release_id]
            self._count -= gone
            self._dropped += gone
            excess -= gone
            if not excess:
                return
