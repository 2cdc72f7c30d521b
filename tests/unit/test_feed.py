"""The live feed's thread when publishing fails: the feed goes on, and says what it lost.

``send`` here is a plain function standing in for the broker's publish, which these
tests make fail or block on purpose (tests/bus/test_progress_feed.py covers the real
brokers).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from orchestrator.contract import Envelope, StepStarted, envelope
from orchestrator.feed import ProgressFeed
from orchestrator.vocabulary import Step

_WAIT_S = 10.0


def _report(release_id: str, batch: int) -> Envelope:
    started = StepStarted(
        environment="staging", service="api", step=Step.DEPLOY, batch=batch, hosts=("h",)
    )
    return envelope(started, release_id=release_id, actor="worker-1")


def test_a_failed_publish_is_logged_and_later_reports_still_go_out() -> None:
    sent: list[Envelope] = []
    first_done = threading.Event()

    def send(reports: Sequence[Envelope]) -> None:
        if not first_done.is_set():
            first_done.set()
            raise ConnectionError("broker away")
        sent.extend(reports)

    feed = ProgressFeed(send, every_s=0.01)
    with capture_logs() as logs:
        feed.offer([_report("R-1", 1)])
        assert first_done.wait(_WAIT_S)
        later = [_report("R-1", 2), _report("R-1", 3)]
        feed.offer(later)
        feed.close()

    assert sent == later
    failures = [entry for entry in logs if "not published" in entry["event"]]
    assert failures == [
        {
            "event": "live feed: reports not published; the timeline has them",
            "log_level": "warning",
            "release_id": "R-1",
            "reports": 1,
            "error": "broker away",
        }
    ]


def test_reports_beyond_the_limit_waiting_on_a_stuck_publish_drop_the_oldest() -> None:
    sent: list[Envelope] = []
    sending, unstick = threading.Event(), threading.Event()

    def send(reports: Sequence[Envelope]) -> None:
        sending.set()
        assert unstick.wait(_WAIT_S)
        sent.extend(reports)

    feed = ProgressFeed(send, every_s=0.01)
    first = _report("R-1", 1)
    feed.offer([first])
    assert sending.wait(_WAIT_S)  # the feed's thread is stuck in the first publish
    waiting = [_report("R-2", n) for n in range(1, 20_002)]
    with capture_logs() as logs:
        for n in range(0, len(waiting), 1000):
            feed.offer(waiting[n : n + 1000])
        unstick.set()
        feed.close()

    assert sent == [first, *waiting[1:]]  # 20,000 kept: the newest
    assert [e["dropped"] for e in logs if "dropped" in e] == [1]


def test_reports_after_close_are_refused() -> None:
    feed = ProgressFeed(lambda reports: None, every_s=0.01)
    feed.close()

    with pytest.raises(RuntimeError, match="closed"):
        feed.offer([_report("R-1", 1)])
