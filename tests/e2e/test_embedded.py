"""The three scenarios on the embedded default: ``drover run`` in one process, no broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.contract import DeployComponent, envelope
from orchestrator.saga import ReleaseStatus
from orchestrator.store import Store, open_store
from tests.e2e.scenarios import (
    FIRST_FAILURE,
    FLEET,
    MIDDLE_FAILURE,
    SCENARIOS,
    Scenario,
    check_effects_once,
    clean_env,
    drover,
    fleet_versions,
    run_and_check,
)
from workers.tasks import work_key

EXPECTED_COMPONENTS = {
    "success": dict.fromkeys(["db", "cache", "api", "jobs", "web"], "deployed"),
    "middle-failure": {
        "db": "rolled_back",
        "cache": "rolled_back",
        "api": "failed",
        "jobs": "rolled_back",
        "web": "skipped",
    },
    "first-failure": {"db": "failed", "api": "skipped", "web": "skipped"},
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_drover_run_embedded(scenario: Scenario, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"
    env = clean_env(store_url=store_url, fleet=str(FLEET))
    before = fleet_versions(env)

    release = drover("run", str(scenario.write(tmp_path)), "--json", env=env)

    view = run_and_check(scenario, release, before, env)
    states = {c["service"]: c["state"] for c in view["components"]}
    assert states == EXPECTED_COMPONENTS[scenario.name]
    store = open_store(store_url)
    try:
        check_effects_once(store.effects(view["id"]))
    finally:
        store.close()


def test_failed_component_puts_its_own_hosts_back(tmp_path: Path) -> None:
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(FLEET))
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        release = drover("run", str(MIDDLE_FAILURE.write(tmp_path)), "--json", env=env)
        assert release.returncode == 1
        effects = store.effects(_release_id(release.stdout))
    finally:
        store.close()
    api = {(host, step) for (_, service, host, step) in effects if service == "api"}
    # The first batch had finished (undrained): it is drained again, then put back.
    # (A verify is a check, not an effect: it changes no host, so it is not counted.)
    for host in ("api-1", "api-2"):
        assert {(host, f"rollback.{s}") for s in ("drain", "deploy", "undrain")} <= api
    # The failing batch was still drained: put back and undrained, not drained twice.
    for host in ("api-3", "api-4"):
        assert (host, "rollback.drain") not in api
        assert {(host, f"rollback.{s}") for s in ("deploy", "undrain")} <= api


def test_run_prints_progress_for_people(tmp_path: Path) -> None:
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(FLEET))
    release = drover("run", str(FIRST_FAILURE.write(tmp_path)), env=env)
    assert release.returncode == 1
    assert "ComponentFailed" in release.stdout
    assert "db@9.0.0-broken" in release.stdout
    assert release.stdout.strip().endswith("rolled_back")


def test_demo_rolls_back_then_succeeds() -> None:
    result = drover("demo", env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": rolled_back" in result.stdout
    assert ": succeeded" in result.stdout
    rollbacks = [line for line in result.stdout.splitlines() if "ComponentRolledBack" in line]
    services = [line.split("ComponentRolledBack")[1].split()[0] for line in rollbacks]
    # accounts is what payments depends on: it is undone after payments.
    assert services.index("payments") < services.index("accounts")


def test_a_run_killed_midway_leaves_no_step_on_record_that_was_not_done(
    tmp_path: Path,
) -> None:
    """A fleet whose steps take no time is changed, and the worker's journal and reports
    written, without waiting for each write: whatever a killed run left on record, no
    host is journaled as drained, deployed or undrained without that change."""
    services = [f"svc-{n:02d}" for n in range(40)]
    fleet, release = tmp_path / "fleet.yaml", tmp_path / "release.yaml"
    fleet.write_text(json.dumps({"environments": {"prod": {"services": _services(services)}}}))
    components = [{"service": service, "version": "2.0.0"} for service in services]
    release.write_text(
        json.dumps({"environment": "prod", "reason": "killed midway", "components": components})
    )
    store_url = f"sqlite:///{tmp_path}/store.db"
    env = clean_env(store_url=store_url, fleet=str(fleet))
    store = open_store(store_url)
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(release), "--json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as run:
            try:
                release_id = _midway(store, effects=600)  # of 2,400
            finally:
                run.kill()
        stored = store.load(release_id)
        assert stored is not None and stored.state.status is ReleaseStatus.RUNNING
        effects = store.effects(release_id)
        journaled = 0
        for service in services:
            command = DeployComponent(environment="prod", service=service, version="2.0.0")
            done = store.progress(work_key(envelope(command, release_id=release_id, actor="t")))
            versions = store.host_versions("prod", service)
            for host, steps in done.items():
                for step in set(steps) - {"verify"}:  # a check, not a change
                    assert ("prod", service, host, step) in effects, (host, step)
                    journaled += 1
                assert "deploy" not in steps or versions[host] == "2.0.0"
        assert journaled >= 300  # the run was killed midway, not before it began
    finally:
        store.close()


def _services(names: list[str]) -> dict[str, object]:
    return {
        name: {
            "hosts": [f"{name}-{n}" for n in range(20)],
            "strategy": {"kind": "rolling", "batch": 5},
            "driver": {"kind": "simulated", "initial_version": "1.0.0", "latency_ms": 0},
        }
        for name in names
    }


def _midway(store: Store, *, effects: int) -> str:
    """The release's id, once at least ``effects`` of its changes are on record."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        releases = store.releases(limit=1)
        if releases and len(store.effects(releases[0].id)) >= effects:
            return releases[0].id
        time.sleep(0.005)
    raise AssertionError(f"the run made fewer than {effects} changes in a minute")


def _release_id(stdout: str) -> str:
    import json

    return str(json.loads(stdout)["id"])
