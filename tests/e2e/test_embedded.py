"""The three scenarios on the embedded default: ``drover run`` in one process, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.store import open_store
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


def _release_id(stdout: str) -> str:
    import json

    return str(json.loads(stdout)["id"])
