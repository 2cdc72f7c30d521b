"""The shell driver against a tiny real fleet: executable scripts and state files.

No mocks: each test writes a script into ``tmp_path`` that keeps one directory of state
files per host (version, drained, in-flight count) and a few for the whole service (live
colour, flags), and logs every call it gets. So a test asserts the real effect of an
operation, what the program received, and, for refused values, that it never ran.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.fleet.drivers import ShellCommands, ShellDriverConfig
from orchestrator.vocabulary import Step
from workers.drivers import Driver, StepError
from workers.drivers.shell import ShellDriver

ENVIRONMENT = "prod"
SERVICE = "payments"
OLD = "1.0.0"
NEW = "2.0.0"

# The fleet: ``fleet STATE ACTION ARGS...``. Run by this interpreter, not a PATH lookup,
# so the tests do not depend on (or wait for) whatever ``python3`` the machine offers.
FLEET_SCRIPT = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path

state = Path(sys.argv[1])
action, args = sys.argv[2], sys.argv[3:]
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps([action, *args]) + "\\n")


def host(name, key):
    directory = state / "hosts" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory / key


def read(path, default=""):
    return path.read_text() if path.exists() else default


if action == "version":
    print(read(host(args[0], "version"), "{OLD}"))
elif action == "drain":
    host(args[0], "drained").write_text("yes")
    print("drained", args[0])
elif action == "undrain":
    host(args[0], "drained").unlink(missing_ok=True)
    print("undrained", args[0])
elif action == "in_flight":
    print(read(host(args[0], "in_flight"), "0"), end="")
elif action == "deploy":
    if not host(args[0], "drained").exists():
        print(args[0], "is serving traffic: drain it first")
        sys.exit(3)
    before = read(host(args[0], "version"), "{OLD}")
    host(args[0], "version").write_text(args[1])
    print(args[0], before, "->", args[1])
elif action == "verify":
    running = read(host(args[0], "version"), "{OLD}")
    if running != args[1]:
        print(args[0], "runs", running, "not", args[1])
        sys.exit(4)
    print(args[0], "runs", running)
elif action == "live_colour":
    print(read(state / "colour"), end="")
elif action == "switch":
    (state / "colour").write_text(args[0])
    print("traffic to", args[0])
elif action == "get_flag":
    print(read(state / "flags" / args[0], "off"), end="")
elif action == "set_flag":
    (state / "flags").mkdir(exist_ok=True)
    (state / "flags" / args[0]).write_text(args[1])
    print(args[0], "is", args[1])
elif action == "args":
    print(json.dumps(args))
elif action == "env":
    (state / "env.json").write_text(json.dumps(dict(os.environ)))
elif action == "fail":
    print("to stdout:", args[1])
    print("to stderr:", args[1], file=sys.stderr)
    sys.exit(int(args[0]))
elif action == "warn-version":
    print("warning: the version cache is stale", file=sys.stderr)
    print(read(host(args[0], "version"), "{OLD}"))
elif action == "spam":
    print("x" * int(args[0]) + "END", end="")
else:
    sys.exit(f"unknown action {{action}}")
"""

# Starts a child that sleeps too, notes both pids, and waits: a timeout must end both.
SLEEPER_SCRIPT = """#!/usr/bin/env bash
sleep 30 &
echo $! > "$1/child.pid"
echo $$ > "$1/parent.pid"
echo started
wait
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class Fleet:
    """The script, its state directory, and ways to read and set that state."""

    def __init__(self, root: Path):
        self.program = _executable(root / "fleet", FLEET_SCRIPT)
        self.state = root / "state"
        self.state.mkdir()

    def command(self, *args: str) -> list[str]:
        return [str(self.program), str(self.state), *args]

    def commands(self, **changes: list[str] | None) -> dict[str, Any]:
        """Every command, as a fleet file would list them, with ``changes`` on top."""
        commands: dict[str, Any] = {
            "version": self.command("version", "{host}"),
            "drain": self.command("drain", "{host}"),
            "deploy": self.command("deploy", "{host}", "{version}"),
            "undrain": self.command("undrain", "{host}"),
            "verify": self.command("verify", "{host}", "{version}"),
            "in_flight": self.command("in_flight", "{host}"),
            "switch": self.command("switch", "{colour}"),
            "live_colour": self.command("live_colour"),
            "set_flag": self.command("set_flag", "{flag}", "{enabled}"),
            "get_flag": self.command("get_flag", "{flag}"),
            **changes,
        }
        return {name: argv for name, argv in commands.items() if argv is not None}

    def driver(
        self,
        *,
        timeout_s: float = 10,
        output_limit: int = 4000,
        environment: str = ENVIRONMENT,
        service: str = SERVICE,
        **changes: list[str] | None,
    ) -> ShellDriver:
        config = ShellDriverConfig.model_validate(
            {
                "kind": "shell",
                "commands": self.commands(**changes),
                "timeout_s": timeout_s,
                "output_limit": output_limit,
            }
        )
        return ShellDriver(config, environment=environment, service=service)

    def calls(self) -> list[list[str]]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def host_state(self, host: str, key: str) -> str | None:
        path = self.state / "hosts" / host / key
        return path.read_text() if path.exists() else None

    def set_host_state(self, host: str, key: str, value: str) -> None:
        directory = self.state / "hosts" / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / key).write_text(value)

    def set_state(self, key: str, value: str) -> None:
        path = self.state / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def _is_gone(pid: int) -> bool:
    """Whether a process has ended. A zombie has: it only waits for a parent to reap it,
    which in a container whose pid 1 is not an init may never happen."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in {"Z", "X"}


def _wait_until_gone(pid: int, within_s: float = 3) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _is_gone(pid):
            return True
        time.sleep(0.02)
    return _is_gone(pid)


# -- the driver does its job ----------------------------------------------------------------


def test_is_a_driver(fleet: Fleet) -> None:
    driver: Driver = fleet.driver()  # mypy checks the protocol here
    assert isinstance(driver, ShellDriver)


def test_a_full_cycle_changes_the_host(fleet: Fleet) -> None:
    driver = fleet.driver()
    assert driver.current_version("h1") == OLD

    assert driver.drain("h1") == "drained h1\n"
    assert fleet.host_state("h1", "drained") == "yes"
    assert driver.in_flight("h1") == 0
    assert driver.deploy("h1", NEW) == f"h1 {OLD} -> {NEW}\n"
    assert fleet.host_state("h1", "version") == NEW
    assert driver.verify("h1", NEW) == f"h1 runs {NEW}\n"
    assert driver.undrain("h1") == "undrained h1\n"
    assert fleet.host_state("h1", "drained") is None

    assert driver.current_version("h1") == NEW
    assert driver.current_version("h2") == OLD  # the other host was not touched
    assert driver.current_versions(["h2", "h1"]) == {"h2": OLD, "h1": NEW}
    assert [call[0] for call in fleet.calls()] == [
        "version",
        "drain",
        "in_flight",
        "deploy",
        "verify",
        "undrain",
        "version",
        "version",
        "version",  # several hosts' versions: one command per host
        "version",
    ]


def test_current_version_is_stripped(fleet: Fleet) -> None:
    fleet.set_host_state("h1", "version", "  3.1.4+build.7\n\n")
    assert fleet.driver().current_version("h1") == "3.1.4+build.7"


@pytest.mark.parametrize("printed", ["", "1.0 beta", "version: 1.0", "-1.0", "1.0\n2.0"])
def test_current_version_refuses_what_is_not_a_version(fleet: Fleet, printed: str) -> None:
    fleet.set_host_state("h1", "version", printed)
    with pytest.raises(StepError) as caught:
        fleet.driver().current_version("h1")
    assert (caught.value.step, caught.value.host) == (Step.DEPLOY, "h1")
    assert "version command printed" in caught.value.reason
    assert "which is not a version" in caught.value.reason
    assert caught.value.output.rstrip("\n") == printed


def test_verify_without_a_command_succeeds_with_nothing(fleet: Fleet) -> None:
    assert fleet.driver(verify=None).verify("h1", NEW) == ""
    assert fleet.calls() == []


def test_verify_fails_when_the_host_runs_another_version(fleet: Fleet) -> None:
    with pytest.raises(StepError) as caught:
        fleet.driver().verify("h1", NEW)
    assert (caught.value.step, caught.value.host) == (Step.VERIFY, "h1")
    assert caught.value.reason == "verify command exited with 4"
    assert caught.value.output == f"h1 runs {OLD} not {NEW}\n"


# -- in flight --------------------------------------------------------------------------------


@pytest.mark.parametrize(("printed", "count"), [("0", 0), ("7\n", 7), ("  12  \n", 12)])
def test_in_flight_reads_the_count(fleet: Fleet, printed: str, count: int) -> None:
    fleet.set_host_state("h1", "in_flight", printed)
    assert fleet.driver().in_flight("h1") == count


@pytest.mark.parametrize(
    "printed", ["", "garbage", "-1", "+3", "3.5", "1_000", "٣", "3 requests", "9" * 19]
)
def test_in_flight_refuses_what_is_not_a_count(fleet: Fleet, printed: str) -> None:
    fleet.set_host_state("h1", "in_flight", printed)
    with pytest.raises(StepError) as caught:
        fleet.driver().in_flight("h1")
    assert (caught.value.step, caught.value.host) == (Step.DRAIN, "h1")
    assert "which is not a count of requests" in caught.value.reason
    assert caught.value.output == printed


def test_in_flight_without_a_command_is_zero(fleet: Fleet) -> None:
    assert fleet.driver(in_flight=None).in_flight("h1") == 0
    assert fleet.calls() == []


def test_a_failing_in_flight_command_names_itself(fleet: Fleet) -> None:
    driver = fleet.driver(in_flight=fleet.command("fail", "2", "lb unreachable"))
    with pytest.raises(StepError) as caught:
        driver.in_flight("h1")
    assert (caught.value.step, caught.value.host) == (Step.DRAIN, "h1")
    assert caught.value.reason == "in_flight command exited with 2"


# -- blue/green ---------------------------------------------------------------------------


def test_live_colour_before_blue_green_was_used(fleet: Fleet) -> None:
    assert fleet.driver().live_colour() is None  # the command prints nothing
    assert fleet.driver(live_colour=None, switch=None).live_colour() is None


def test_switch_moves_the_traffic(fleet: Fleet) -> None:
    driver = fleet.driver()
    assert driver.switch("green") == "traffic to green\n"
    assert driver.live_colour() == "green"
    driver.switch("blue")
    assert driver.live_colour() == "blue"
    assert fleet.calls()[-2:] == [["switch", "blue"], ["live_colour"]]


def test_live_colour_tolerates_a_newline(fleet: Fleet) -> None:
    fleet.set_state("colour", "green\n")
    assert fleet.driver().live_colour() == "green"


@pytest.mark.parametrize("printed", ["purple", "blue green", "blue\nok"])
def test_live_colour_refuses_another_word(fleet: Fleet, printed: str) -> None:
    fleet.set_state("colour", printed)
    with pytest.raises(StepError) as caught:
        fleet.driver().live_colour()
    assert (caught.value.step, caught.value.host) == (Step.SWITCH, "")
    assert "not 'blue' or 'green'" in caught.value.reason
    assert str(caught.value).startswith("switch: ")  # no host for the whole service


def test_switch_without_a_command(fleet: Fleet) -> None:
    with pytest.raises(StepError) as caught:
        fleet.driver(switch=None, live_colour=None).switch("green")
    assert (caught.value.step, caught.value.host) == (Step.SWITCH, "")
    assert caught.value.reason == "no switch command in the fleet file"


def test_switch_refuses_a_colour_that_is_not_one(fleet: Fleet) -> None:
    with pytest.raises(StepError) as caught:
        fleet.driver().switch("purple")  # type: ignore[arg-type]  # as if off the bus
    assert caught.value.step == Step.SWITCH
    assert "is not blue or green" in caught.value.reason
    assert fleet.calls() == []


# -- flags --------------------------------------------------------------------------------


def test_set_flag_and_read_it_back(fleet: Fleet) -> None:
    driver = fleet.driver()
    assert driver.flag("new-checkout") is False  # the fleet's default
    assert driver.set_flag("new-checkout", True) == "new-checkout is on\n"
    assert (fleet.state / "flags" / "new-checkout").read_text() == "on"
    assert driver.flag("new-checkout") is True
    driver.set_flag("new-checkout", False)
    assert driver.flag("new-checkout") is False
    assert ["set_flag", "new-checkout", "off"] in fleet.calls()


@pytest.mark.parametrize(
    ("printed", "enabled"),
    [("on", True), ("off", False), ("true\n", True), ("false", False), ("1", True), ("0", False)],
)
def test_flag_words(fleet: Fleet, printed: str, enabled: bool) -> None:
    fleet.set_state("flags/f", printed)
    assert fleet.driver().flag("f") is enabled


@pytest.mark.parametrize("printed", ["", "yes", "enabled", "on off"])
def test_flag_refuses_another_word(fleet: Fleet, printed: str) -> None:
    fleet.set_state("flags/f", printed)
    with pytest.raises(StepError) as caught:
        fleet.driver().flag("f")
    assert (caught.value.step, caught.value.host) == (Step.TOGGLE, "")
    assert "not 'on' or 'off'" in caught.value.reason


def test_flags_without_commands(fleet: Fleet) -> None:
    driver = fleet.driver(set_flag=None, get_flag=None)
    for operation in (lambda: driver.flag("f"), lambda: driver.set_flag("f", True)):
        with pytest.raises(StepError) as caught:
            operation()
        assert (caught.value.step, caught.value.host) == (Step.TOGGLE, "")
        assert caught.value.reason == "no set_flag/get_flag command in the fleet file"


# -- no shell -------------------------------------------------------------------------------


def test_template_arguments_are_passed_verbatim(fleet: Fleet, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    literal = [
        f"$(touch {pwned})",
        f"`touch {pwned}`",
        f"x; touch {pwned}",
        f"x && touch {pwned} | cat > {pwned}",
        "two words",
        "*",
        "~",
        "$HOME",
        "'quoted'",
        '"double"',
        "",
    ]
    driver = fleet.driver(drain=fleet.command("args", *literal, "--host={host}"))
    output = driver.drain("h1")
    assert json.loads(output) == [*literal, "--host=h1"]
    assert not pwned.exists()


def test_a_value_fills_one_argument(fleet: Fleet) -> None:
    driver = fleet.driver(
        deploy=fleet.command("args", "{host}", "--to={version}", "{service}@{environment}")
    )
    output = driver.deploy("web-1.eu.example", "2.0.0-rc.1+build.7")
    assert json.loads(output) == ["web-1.eu.example", "--to=2.0.0-rc.1+build.7", "payments@prod"]


BAD_HOSTS = [
    "h1;rm -rf /",
    "$(id)",
    "`id`",
    "../x",
    "",
    "h1\n",
    "h 1",
    "-rf",
    "h1|cat",
    "a" * 254,
]
BAD_VERSIONS = ["1.0;id", "$(id)", "", "1.0\n", "../1.0", "-1.0", "1 0", "v" * 65]


@pytest.mark.parametrize("host", BAD_HOSTS)
@pytest.mark.parametrize(
    ("step", "operation"),
    [
        (Step.DEPLOY, lambda driver, host: driver.current_version(host)),
        (Step.DRAIN, lambda driver, host: driver.drain(host)),
        (Step.DRAIN, lambda driver, host: driver.in_flight(host)),
        (Step.DEPLOY, lambda driver, host: driver.deploy(host, NEW)),
        (Step.VERIFY, lambda driver, host: driver.verify(host, NEW)),
        (Step.UNDRAIN, lambda driver, host: driver.undrain(host)),
    ],
)
def test_a_bad_host_is_refused_before_anything_runs(
    fleet: Fleet, host: str, step: Step, operation: Callable[[ShellDriver, str], object]
) -> None:
    with pytest.raises(StepError) as caught:
        operation(fleet.driver(), host)
    assert (caught.value.step, caught.value.host) == (step, host)
    assert caught.value.reason.endswith("is not a valid host name")
    assert "\n" not in caught.value.reason  # the value is quoted, not pasted into logs
    assert fleet.calls() == []


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_a_bad_version_is_refused_before_anything_runs(fleet: Fleet, version: str) -> None:
    driver = fleet.driver()
    for step, operation in ((Step.DEPLOY, driver.deploy), (Step.VERIFY, driver.verify)):
        with pytest.raises(StepError) as caught:
            operation("h1", version)
        assert caught.value.step == step
        assert caught.value.reason.endswith("is not a valid version")
    assert fleet.calls() == []


def test_a_bad_value_is_refused_even_without_a_command(fleet: Fleet) -> None:
    driver = fleet.driver(verify=None, in_flight=None)
    with pytest.raises(StepError, match="not a valid version"):
        driver.verify("h1", "$(id)")
    with pytest.raises(StepError, match="not a valid host name"):
        driver.in_flight("h1;id")


@pytest.mark.parametrize("name", ["new checkout", "$(id)", "Flag", "", "../f", "f\n"])
def test_a_bad_flag_name_is_refused_before_anything_runs(fleet: Fleet, name: str) -> None:
    driver = fleet.driver()
    with pytest.raises(StepError, match="is not a valid flag name"):
        driver.flag(name)
    with pytest.raises(StepError, match="is not a valid flag name"):
        driver.set_flag(name, True)
    assert fleet.calls() == []


@pytest.mark.parametrize(
    ("names", "what"),
    [
        ({"service": "pay;id"}, "service name"),
        ({"environment": "$(id)"}, "environment name"),
        ({"service": "Payments"}, "service name"),
    ],
)
def test_a_bad_service_or_environment_is_refused(
    fleet: Fleet, names: dict[str, str], what: str
) -> None:
    driver = fleet.driver(**names)  # type: ignore[arg-type]
    with pytest.raises(StepError, match=f"is not a valid {what}"):
        driver.drain("h1")
    with pytest.raises(StepError, match=f"is not a valid {what}"):
        driver.switch("green")
    assert fleet.calls() == []


# -- failures -------------------------------------------------------------------------------


def test_a_non_zero_exit_is_a_step_error_with_the_output(fleet: Fleet) -> None:
    with pytest.raises(StepError) as caught:
        fleet.driver().deploy("h1", NEW)  # not drained: the fleet refuses
    assert (caught.value.step, caught.value.host) == (Step.DEPLOY, "h1")
    assert caught.value.reason == "deploy command exited with 3"
    assert caught.value.output == "h1 is serving traffic: drain it first\n"
    assert fleet.host_state("h1", "version") is None  # nothing deployed
    assert str(caught.value) == "deploy on h1: deploy command exited with 3"


def test_the_output_holds_stdout_and_stderr(fleet: Fleet) -> None:
    driver = fleet.driver(undrain=fleet.command("fail", "1", "lb said no"))
    with pytest.raises(StepError) as caught:
        driver.undrain("h1")
    assert caught.value.reason == "undrain command exited with 1"
    assert "to stdout: lb said no" in caught.value.output
    assert "to stderr: lb said no" in caught.value.output


def test_a_warning_on_stderr_does_not_spoil_a_query(fleet: Fleet) -> None:
    driver = fleet.driver(version=fleet.command("warn-version", "{host}"))

    assert driver.current_version("h1") == OLD


def test_a_timeout_ends_the_command_and_what_it_started(fleet: Fleet, tmp_path: Path) -> None:
    sleeper = _executable(tmp_path / "sleeper", SLEEPER_SCRIPT)
    driver = fleet.driver(timeout_s=0.5, drain=[str(sleeper), str(fleet.state), "{host}"])
    started = time.monotonic()
    with pytest.raises(StepError) as caught:
        driver.drain("h1")
    # The child holds the output pipe: had it lived on, reading the output would have
    # waited the whole 30 s for it.
    assert time.monotonic() - started < 5
    assert (caught.value.step, caught.value.host) == (Step.DRAIN, "h1")
    assert caught.value.reason == "drain command timed out after 0.5 s"
    assert caught.value.output == "started\n"
    for name in ("parent.pid", "child.pid"):
        pid = int((fleet.state / name).read_text())
        assert _wait_until_gone(pid), f"{name} {pid} still runs"


def test_long_output_is_cut_and_says_so(fleet: Fleet) -> None:
    driver = fleet.driver(output_limit=200, drain=fleet.command("spam", "5000"))
    output = driver.drain("h1")
    assert output.startswith("[4803 characters cut]\n")
    assert output.endswith("x" * 197 + "END")  # the end, which usually says why, is kept
    assert len(output) == len("[4803 characters cut]\n") + 200


def test_a_missing_program_is_a_clear_step_error(fleet: Fleet, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    driver = fleet.driver(drain=[str(missing), "{host}"])
    with pytest.raises(StepError) as caught:
        driver.drain("h1")
    assert (caught.value.step, caught.value.host) == (Step.DRAIN, "h1")
    assert (
        caught.value.reason
        == f"drain command cannot run {str(missing)!r}: No such file or directory"
    )


def test_a_program_that_is_not_executable(fleet: Fleet, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(StepError, match="Permission denied"):
        fleet.driver(undrain=[str(plain)]).undrain("h1")


# -- environment --------------------------------------------------------------------------


def test_drovers_own_settings_are_hidden(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROVER_TOKEN", "secret")
    monkeypatch.setenv("DROVER_STORE_URL", "redis://user:pw@store")
    monkeypatch.setenv("SHELL_TEST_MARKER", "visible")
    fleet.driver(drain=fleet.command("env")).drain("h1")
    seen = json.loads((fleet.state / "env.json").read_text())
    assert not [name for name in seen if name.startswith("DROVER_")]
    assert seen["SHELL_TEST_MARKER"] == "visible"
    assert seen["PATH"] == os.environ["PATH"]


# -- the fleet file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv", "known"),
    [
        ("drain", ["drain", "{hostname}"], "{environment}, {host}, {service}"),
        ("drain", ["drain", "{version}"], "{environment}, {host}, {service}"),
        ("switch", ["switch", "{host}"], "{colour}, {environment}, {service}"),
        ("get_flag", ["get", "{enabled}"], "{environment}, {flag}, {service}"),
    ],
)
def test_an_unknown_placeholder_is_refused_when_the_file_is_read(
    fleet: Fleet, command: str, argv: list[str], known: str
) -> None:
    commands = fleet.commands(**{command: argv})
    with pytest.raises(ValidationError) as caught:
        ShellDriverConfig.model_validate({"kind": "shell", "commands": commands})
    (error,) = caught.value.errors()
    assert error["loc"] == ("commands", command)
    placeholder = argv[1]
    assert f"unknown placeholder {placeholder} in {placeholder!r} (known: {known})" in error["msg"]


def test_a_command_needs_a_program() -> None:
    with pytest.raises(ValidationError):
        ShellCommands.model_validate(
            {"version": [], "drain": ["d"], "deploy": ["d"], "undrain": ["u"]}
        )
