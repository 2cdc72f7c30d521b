"""A worker carries out a command only if the saga still waits for it, as the release
stood when the worker took the command's lease: a deploy whose component timed out (its
rollback owns the hosts now), or that belongs to an earlier run of the release, must not
touch a host."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.contract import ComponentDeployed
from orchestrator.runtime import Parts
from orchestrator.saga import ComponentState, ComponentStatus, ReleaseState, ReleaseStatus
from tests.support.runner import web_deploy
from workers.tasks import work_key

HOSTS = ["web-1", "web-2", "web-3"]


def _release(parts: Parts, status: ComponentStatus, attempt: int) -> None:
    now = datetime.now(UTC)
    web = ComponentState(service="web", version="2.0.0", status=status, attempt=attempt)
    state = ReleaseState(
        id="r1",
        environment="staging",
        requested_by="test",
        status=ReleaseStatus.RUNNING,
        components={"web": web},
        attempt=attempt,
        created_at=now,
        updated_at=now,
    )
    parts.store.commit(
        "r1", message_id="m1", expected_revision=None, state=state, outbox=[], timeline=[]
    )


@pytest.mark.parametrize(
    ("status", "attempt"),
    [
        (ComponentStatus.TIMED_OUT, 1),
        (ComponentStatus.ROLLING_BACK, 1),
        (ComponentStatus.DEPLOYING, 2),
    ],
)
def test_a_command_the_saga_moved_on_from_touches_no_host(
    tmp_path: Path, status: ComponentStatus, attempt: int
) -> None:
    with web_deploy(tmp_path) as (parts, runner, command):
        _release(parts, status, attempt)
        runner.deploy(command.to_wire())

        versions = parts.store.host_versions("staging", "web")
        assert parts.store.outcome(work_key(command)) is None
        assert [m.type for m in parts.store.timeline("r1")] == []
    assert all(versions.get(host, "1.0.0") == "1.0.0" for host in HOSTS)


def test_a_command_the_saga_waits_for_is_carried_out(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, runner, command):
        _release(parts, ComponentStatus.DEPLOYING, 1)
        runner.deploy(command.to_wire())

        outcome = parts.store.outcome(work_key(command))
        versions = parts.store.host_versions("staging", "web")
    assert outcome is not None and isinstance(outcome.payload, ComponentDeployed)
    assert [versions[host] for host in HOSTS] == ["2.0.0"] * 3
