"""The release scenarios every mode must get right, and the checks that prove it.

Each mode (embedded, separate processes over Redis, over RabbitMQ) runs the same three
releases against ``tests/e2e/fleet.yaml`` through the real CLI, then checks the final
state, the host versions from ``drover fleet --json``, the store's effect counters, and
the order of the timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FLEET = Path(__file__).with_name("fleet.yaml")
ENVIRONMENT = "staging"


@dataclass(frozen=True)
class Scenario:
    name: str
    components: list[dict[str, Any]]
    final_state: str
    exit_code: int

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.yaml"
        release = {"environment": ENVIRONMENT, "reason": self.name, "components": self.components}
        path.write_text(yaml.safe_dump(release))
        return path

    @property
    def versions(self) -> dict[str, str]:
        return {c["service"]: c["version"] for c in self.components}


SUCCESS = Scenario(
    "success",
    [
        {"service": "db", "version": "3.0.0"},
        {"service": "cache", "version": "3.0.0"},
        {"service": "api", "version": "3.0.0", "depends_on": ["db"]},
        {"service": "jobs", "version": "3.0.0", "depends_on": ["db"]},
        {"service": "web", "version": "3.0.0", "depends_on": ["api", "cache"]},
    ],
    final_state="succeeded",
    exit_code=0,
)

# api fails verification on api-3, in its second batch, while jobs is still deploying.
MIDDLE_FAILURE = Scenario(
    "middle-failure",
    [
        {"service": "db", "version": "4.0.0"},
        {"service": "cache", "version": "4.0.0"},
        {"service": "api", "version": "2.0.0-broken", "depends_on": ["db"]},
        {"service": "jobs", "version": "4.0.0", "depends_on": ["db"]},
        {"service": "web", "version": "4.0.0", "depends_on": ["api", "cache"]},
    ],
    final_state="rolled_back",
    exit_code=1,
)

# db, the root of a chain, fails on its first host: nothing was deployed to undo.
FIRST_FAILURE = Scenario(
    "first-failure",
    [
        {"service": "db", "version": "9.0.0-broken"},
        {"service": "api", "version": "5.0.0", "depends_on": ["db"]},
        {"service": "web", "version": "5.0.0", "depends_on": ["api"]},
    ],
    final_state="rolled_back",
    exit_code=1,
)

SCENARIOS = [SUCCESS, MIDDLE_FAILURE, FIRST_FAILURE]


def drover(
    *args: str, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``drover`` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def clean_env(**drover_vars: str) -> dict[str, str]:
    """The test's environment without any DROVER_* the caller had, plus ``drover_vars``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    env.update({f"DROVER_{k.upper()}": v for k, v in drover_vars.items()})
    env["DROVER_LOG_FORMAT"] = "json"
    return env


def fleet_versions(env: dict[str, str]) -> dict[str, dict[str, str]]:
    result = drover("fleet", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[ENVIRONMENT]


def run_and_check(
    scenario: Scenario,
    release: subprocess.CompletedProcess[str],
    before: dict[str, dict[str, str]],
    env: dict[str, str],
) -> dict[str, Any]:
    """Check everything a user relies on after ``release`` (a ``--json`` run) finished."""
    assert release.returncode == scenario.exit_code, release.stdout + release.stderr
    view = json.loads(release.stdout)
    assert view["state"] == scenario.final_state
    after = fleet_versions(env)
    if scenario.final_state == "succeeded":
        for service, version in scenario.versions.items():
            assert set(after[service].values()) == {version}, (service, after[service])
    else:
        assert after == before  # every host back on exactly the version it ran before
    check_timeline(scenario, view)
    return view


def check_timeline(scenario: Scenario, view: dict[str, Any]) -> None:
    timeline = view["timeline"]
    types = [entry["type"] for entry in timeline]
    assert types[0] == "SubmitRelease"
    assert (
        types[-1]
        == {"succeeded": "ReleaseSucceeded", "rolled_back": "ReleaseRolledBack"}[
            scenario.final_state
        ]
    )
    position = {
        (entry["type"], entry.get("service")): index for index, entry in enumerate(timeline)
    }
    depends = {c["service"]: c.get("depends_on", []) for c in scenario.components}
    for service, dependencies in depends.items():
        if ("DeployComponent", service) not in position:
            continue
        for dependency in dependencies:  # never started before what it depends on
            assert (
                position[("ComponentDeployed", dependency)] < position[("DeployComponent", service)]
            )
    for service, dependencies in depends.items():
        if ("ComponentRolledBack", service) not in position:
            continue
        for dependency in dependencies:  # undone before what it depends on is undone
            if ("RollbackComponent", dependency) in position:
                assert (
                    position[("ComponentRolledBack", service)]
                    < position[("RollbackComponent", dependency)]
                )
    rollbacks = [e["service"] for e in timeline if e["type"] == "RollbackComponent"]
    assert len(rollbacks) == len(set(rollbacks)), "a component was rolled back twice"
    failures = [i for i, e in enumerate(timeline) if e["type"] == "ComponentFailed"]
    if failures:  # after the first failure, nothing new starts
        assert "DeployComponent" not in types[failures[0] :]


def check_effects_once(effects: dict[tuple[str, str, str, str], int]) -> None:
    """No effect on any host for the same step happened twice in one release."""
    repeated = {key: count for key, count in effects.items() if count != 1}
    assert not repeated, repeated
