"""The on-call light, reason by reason: what turns it amber, what turns it red."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from orchestrator.manual_locks import ManualLock
from orchestrator.queues import QueueDepth
from orchestrator.saga import ComponentState, ComponentStatus, ReleaseState, ReleaseStatus
from orchestrator.status import Facts, Light, ReleaseFacts, judge
from tests.unit.builders import T0

NOW = T0 + timedelta(hours=2)
SERVICE_QUEUE = "drover.svc.api"


def release(status: ReleaseStatus, **changes: Any) -> ReleaseState:
    return ReleaseState(
        id="R-1",
        environment="prod",
        requested_by="ci",
        status=status,
        created_at=T0,
        updated_at=T0,
        **changes,
    )


def queue(name: str = SERVICE_QUEUE, **changes: Any) -> QueueDepth:
    row: QueueDepth = {
        "name": name,
        "ready": 0,
        "unacked": 0,
        "consumers": 1,
        "oldest_age_s": None,
        "source": "redis",
    }
    row.update(changes)  # type: ignore[typeddict-item]
    return row


def light_of(**facts: Any) -> tuple[Light, list[str]]:
    light, reasons = judge(Facts(NOW, **facts))
    return light, [r.what for r in reasons]


def test_nothing_to_say_is_green() -> None:
    assert light_of() == (Light.GREEN, [])
    assert light_of(queues=[queue()]) == (Light.GREEN, [])


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"unreachable": ["broker: refused"]}, (Light.RED, ["unreachable"])),
        (
            {"releases": [ReleaseFacts(release(ReleaseStatus.FAILED, finished_at=NOW), NOW)]},
            (Light.RED, ["release failed"]),
        ),
        (
            {
                "releases": [
                    ReleaseFacts(release(ReleaseStatus.RUNNING), NOW - timedelta(minutes=11))
                ]
            },
            (Light.RED, ["release stuck"]),
        ),
        (
            {"releases": [ReleaseFacts(release(ReleaseStatus.RUNNING), NOW, ("shop orders",))]},
            (Light.RED, ["business signal flat-lined"]),
        ),
        ({"queues": [queue(consumers=0, ready=2)]}, (Light.RED, ["no consumer"])),
        ({"queues": [queue(consumers=0)]}, (Light.AMBER, ["no consumer"])),
        ({"queues": [queue(oldest_age_s=301.0, ready=1)]}, (Light.RED, ["queue old"])),
        ({"queues": [queue(oldest_age_s=61.0, ready=1)]}, (Light.AMBER, ["queue old"])),
        ({"queues": [queue(ready=101)]}, (Light.AMBER, ["queue backing up"])),
        ({"dead_letters": 3}, (Light.AMBER, ["dead letters"])),
        (
            {
                "locks": [
                    ManualLock(
                        environment="prod",
                        service="api",
                        owner="alice",
                        reason="freeze",
                        since=NOW,
                    )
                ]
            },
            (Light.AMBER, ["locked"]),
        ),
        (
            {"releases": [ReleaseFacts(release(ReleaseStatus.ROLLED_BACK, finished_at=NOW), NOW)]},
            (Light.AMBER, ["release rolled back"]),
        ),
        (
            {"releases": [ReleaseFacts(release(ReleaseStatus.AWAITING_APPROVAL), NOW)]},
            (Light.AMBER, ["waiting for a person"]),
        ),
        (
            {"releases": [ReleaseFacts(release(ReleaseStatus.PAUSED, paused_by="al"), NOW)]},
            (Light.AMBER, ["waiting for a person"]),
        ),
        (
            {
                "releases": [
                    ReleaseFacts(
                        release(
                            ReleaseStatus.RUNNING,
                            components={
                                "api": ComponentState(
                                    service="api",
                                    version="2.0.0",
                                    status=ComponentStatus.AWAITING_APPROVAL,
                                )
                            },
                        ),
                        NOW - timedelta(hours=1),  # silent long, but it is a person's turn
                    )
                ]
            },
            (Light.AMBER, ["waiting for a person"]),
        ),
    ],
)
def test_each_reason_turns_the_light(
    facts: dict[str, Any], expected: tuple[Light, list[str]]
) -> None:
    assert light_of(**facts) == expected


def test_what_is_old_news_does_not_show() -> None:
    yesterday = NOW - timedelta(hours=25)
    failed = ReleaseFacts(release(ReleaseStatus.FAILED, finished_at=yesterday), yesterday)
    rolled_back = ReleaseFacts(
        release(ReleaseStatus.ROLLED_BACK, finished_at=NOW - timedelta(hours=2)), NOW
    )

    assert light_of(releases=[failed, rolled_back]) == (Light.GREEN, [])


def test_a_broker_that_cannot_count_consumers_says_nothing_of_them() -> None:
    assert light_of(queues=[queue(consumers=None, ready=3)]) == (Light.GREEN, [])


def test_reasons_come_worst_first_and_the_light_is_the_worst() -> None:
    light, reasons = light_of(dead_letters=1, unreachable=["store: down"])

    assert light is Light.RED
    assert reasons == ["unreachable", "dead letters"]
