"""The command line as a user meets it: help, the schema, and logs that tools can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.contract import MESSAGE_TYPES
from tests.e2e.scenarios import FLEET, MIDDLE_FAILURE, clean_env, drover

COMMANDS = [
    [],
    ["demo"],
    ["run"],
    ["coordinator"],
    ["worker"],
    ["release"],
    ["release", "submit"],
    ["release", "show"],
    ["releases"],
    ["fleet"],
    ["queues"],
    ["schema"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "drover")
def test_every_command_has_help(command: list[str]) -> None:
    result = drover(*command, "--help", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_schema_describes_every_message(tmp_path: Path) -> None:
    result = drover("schema", env=clean_env())
    schemas = json.loads(result.stdout)
    assert set(schemas) == set(MESSAGE_TYPES)
    submit = schemas["SubmitRelease"]
    assert submit["properties"]["type"] == {"const": "SubmitRelease", "title": "Type"}
    assert "components" in submit["properties"]["payload"]["properties"]

    written = drover("schema", "--out", str(tmp_path / "schemas"), env=clean_env())
    assert written.returncode == 0
    assert {p.stem for p in (tmp_path / "schemas").glob("*.json")} == set(MESSAGE_TYPES)


def test_logs_are_json_lines_bound_to_release_service_and_step(tmp_path: Path) -> None:
    env = clean_env(store_url=f"sqlite:///{tmp_path}/store.db", fleet=str(FLEET))
    result = drover("run", str(MIDDLE_FAILURE.write(tmp_path)), "--json", "--verbose", env=env)
    release_id = json.loads(result.stdout)["id"]

    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]

    steps = [line for line in lines if line["event"] in ("step started", "step failed")]
    assert steps, result.stderr
    for line in steps:
        assert line["release_id"] == release_id
        assert line["service"] in MIDDLE_FAILURE.versions
        assert line["step"] in ("drain", "deploy", "verify", "undrain")
    failed = [line for line in lines if line["event"] == "step failed"]
    assert failed[0]["service"] == "api"
    assert failed[0]["host"] == "api-3"
    assert all("level" in line and "timestamp" in line for line in lines)


def test_fleet_without_a_fleet_file_says_how_to_give_one() -> None:
    result = drover("fleet", env=clean_env())
    assert result.returncode == 2
    assert "DROVER_FLEET" in result.stderr


def test_a_misspelt_variable_is_refused_with_a_suggestion() -> None:
    env = clean_env(fleet=str(FLEET))
    env["DROVER_BROKER_ULR"] = "redis://127.0.0.1:6379/0"
    result = drover("releases", env=env)
    assert result.returncode == 2
    assert "DROVER_BROKER_ULR (did you mean DROVER_BROKER_URL?)" in result.stderr


def test_showing_an_unknown_release_is_an_input_error(tmp_path: Path) -> None:
    result = drover(
        "release", "show", "R-nope", env=clean_env(store_url=f"sqlite:///{tmp_path}/s.db")
    )
    assert result.returncode == 2
    assert "no release 'R-nope'" in result.stderr


def test_showing_a_release_that_turns_a_flag_names_the_flag(tmp_path: Path) -> None:
    demo = Path(__file__).parents[2] / "orchestrator" / "demo"
    env = clean_env(store_url=f"sqlite:///{tmp_path}/s.db", fleet=str(demo / "fleet.yaml"))
    ran = drover("run", str(demo / "release-fixed.yaml"), "--json", env=env)
    release_id = json.loads(ran.stdout)["id"]

    shown = drover("release", "show", release_id, env=env)

    assert shown.returncode == 0, shown.stderr
    assert "checkout.one-click" in shown.stdout and "flag turned on" in shown.stdout
    assert "3.0.4 -> 3.1.1" in shown.stdout  # the versioned components as before


def test_submitting_to_an_unreachable_broker_says_so_in_one_line(tmp_path: Path) -> None:
    env = clean_env(
        broker_url="redis://:sekrit@127.0.0.1:1/0",
        store_url=f"sqlite:///{tmp_path}/s.db",
        fleet=str(FLEET),
    )
    result = drover("release", "submit", str(MIDDLE_FAILURE.write(tmp_path)), env=env)
    assert result.returncode == 3
    assert "the broker is unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sekrit" not in result.stderr  # the password is never printed


@pytest.mark.broker
@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "text"])
def test_waiting_for_a_release_that_does_not_end_in_time_says_so(
    output: list[str], redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # No coordinator runs: the release is submitted, and nobody carries it out.
    env = clean_env(
        broker_url=redis_url,
        store_url=f"sqlite:///{tmp_path}/s.db",
        fleet=str(FLEET),
        namespace=namespace,
    )
    release = str(MIDDLE_FAILURE.write(tmp_path))

    result = drover("release", "submit", release, "--wait", *output, "--timeout", "1", env=env)

    assert result.returncode == 3
    assert "did not finish within 1 s; it goes on without this command" in result.stderr
    assert "Traceback" not in result.stderr


def test_queues_needs_a_real_broker() -> None:
    result = drover("queues", env=clean_env(fleet=str(FLEET)))
    assert result.returncode == 2
    assert "DROVER_BROKER_URL" in result.stderr
