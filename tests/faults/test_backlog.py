"""A coordinator that falls behind must not blame the workers for its own delay.

The coordinator is frozen (SIGSTOP: a stalled machine, a long pause) while a worker goes
on reporting, each report well within the service's step timeout of the one before, and
finishes. When the coordinator is let go, the worker's last word (in the store) and its
outcome (waiting in the coordinator's queue) are older than a step timeout: judged by the
wall clock, the component's deadline has passed before the outcome is read, and the
command would be sent again or timed out. Judged as of what it has read, no deadline
passed, and the release goes on as if nothing happened. (Checked: with ``ReadUpTo``
answering the wall clock, this test fails.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.store import Store, open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import running_cluster
from tests.e2e.scenarios import drover
from tests.faults.invariants import wait_until_ended

pytestmark = pytest.mark.broker

STEP_TIMEOUT_S = 2
STEP_LATENCY_MS = 600  # each driver call: four steps take about 2.4 s, more than a timeout
FROZEN_S = 5.0


def _fleet(folder: Path) -> Path:
    service = {
        "hosts": ["slow-1"],
        "step_timeout_s": STEP_TIMEOUT_S,
        "driver": {"kind": "simulated", "initial_version": "1.0.0", "latency_ms": STEP_LATENCY_MS},
    }
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump({"environments": {"staging": {"services": {"slow": service}}}}))
    return path


def _release(folder: Path) -> Path:
    path = folder / "release.yaml"
    release = {"environment": "staging", "components": [{"service": "slow", "version": "2.0.0"}]}
    path.write_text(yaml.safe_dump(release))
    return path


def test_reports_waiting_behind_a_frozen_coordinator_are_not_late(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    with running_cluster("redis", tmp_path, fleet=fleet, workers={"worker": ("slow",)}) as cluster:
        store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
        try:
            submitted = drover("release", "submit", str(_release(tmp_path)), env=cluster.env)
            assert submitted.returncode == 0, submitted.stderr
            release_id = submitted.stdout.strip()
            _wait_for_component_started(store, release_id)

            coordinator = cluster.pid("coordinator")
            os.kill(coordinator, signal.SIGSTOP)
            time.sleep(FROZEN_S)  # the worker goes on: deploy, verify, undrain, done
            os.kill(coordinator, signal.SIGCONT)

            ended = wait_until_ended(store, release_id, timeout_s=60)
        finally:
            store.close()
        cluster.assert_alive()

    types = [message.type for message in ended.timeline]
    assert ended.state.status == "succeeded", types
    assert "DeadlinePassed" not in types
    assert types.count("DeployComponent") == 1, "the command was sent again"


def _wait_for_component_started(store: Store, release_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(m.type == "ComponentStarted" for m in store.timeline(release_id)):
            return
        time.sleep(0.05)
    raise AssertionError(f"release {release_id}: its component never started")
