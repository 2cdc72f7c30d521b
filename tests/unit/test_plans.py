"""Fleet and release files: what parses, and the exact path and reason of what does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.contract import ComponentRequest, Problem, Step, SubmitRelease
from orchestrator.fleet import Fleet
from orchestrator.fleet.drivers import FailureInjection
from orchestrator.fleet.strategies import RollingStrategy
from orchestrator.plans import InvalidInput, load_fleet, load_release, plan_release
from tests.unit.builders import component, fleet, submit

FLEET = """\
environments:
  staging:
    services:
      payments:
        hosts: [pay-1, pay-2, pay-3]
        strategy: {kind: rolling, batch: 2}
        driver:
          kind: simulated
          initial_version: 1.4.0
          latency_ms: 5
          fail:
            - step: verify
              version: 2.0.0
              host: pay-2
      ledger:
        hosts: [ledger-1]
        driver: {kind: simulated, initial_version: 3.1.0}
  prod:
    services:
      payments:
        hosts: [pay-a]
        driver: {kind: simulated, initial_version: 1.4.0}
"""

RELEASE = """\
environment: staging
reason: new fee model
components:
  - service: ledger
    version: 3.2.0
  - service: payments
    version: 2.0.0
    depends_on: [ledger]
"""


def write(directory: Path, text: str, name: str = "file.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def fleet_problems(directory: Path, text: str) -> list[tuple[str, str]]:
    path = write(directory, text, "fleet.yaml")
    with pytest.raises(InvalidInput) as caught:
        load_fleet(path)
    assert caught.value.source == str(path)
    return [(p.path, p.reason) for p in caught.value.problems]


def release_problems(directory: Path, text: str) -> list[tuple[str, str]]:
    path = write(directory, text, "release.yaml")
    with pytest.raises(InvalidInput) as caught:
        load_release(path)
    assert caught.value.source == str(path)
    return [(p.path, p.reason) for p in caught.value.problems]


def service_yaml(**lines: str) -> str:
    """A fleet with one service, ``payments`` in ``staging``, with ``lines`` replaced."""
    fields = {
        "hosts": "[pay-1, pay-2]",
        "driver": "{kind: simulated, initial_version: 1.0.0}",
        **lines,
    }
    body = "\n".join(f"        {key}: {value}" for key, value in fields.items())
    return f"environments:\n  staging:\n    services:\n      payments:\n{body}\n"


# --- the fleet ----------------------------------------------------------------------------


def test_valid_fleet_parses_into_its_environments_services_and_drivers(tmp_path: Path) -> None:
    parsed = load_fleet(write(tmp_path, FLEET))

    assert sorted(parsed.environments) == ["prod", "staging"]
    payments = parsed.service("staging", "payments")
    assert payments.hosts == ("pay-1", "pay-2", "pay-3")
    assert payments.strategy == RollingStrategy(kind="rolling", batch=2)
    assert payments.driver.initial_version == "1.4.0"
    assert payments.driver.latency_ms == 5
    assert payments.driver.fail == (
        FailureInjection(step=Step.VERIFY, version="2.0.0", host="pay-2"),
    )
    ledger = parsed.service("staging", "ledger")
    assert ledger.strategy == RollingStrategy(kind="rolling", batch=1)
    assert ledger.driver.fail == ()
    assert parsed.service_names() == ["ledger", "payments"]


def test_fleet_accepts_a_path_given_as_a_string(tmp_path: Path) -> None:
    assert load_fleet(str(write(tmp_path, FLEET))) == load_fleet(tmp_path / "file.yaml")


def test_batches_split_hosts_by_batch_size_keeping_order(tmp_path: Path) -> None:
    payments = load_fleet(write(tmp_path, FLEET)).service("staging", "payments")

    assert payments.strategy.batches(payments.hosts) == [("pay-1", "pay-2"), ("pay-3",)]


def test_timeouts_default_to_five_minutes_a_step_and_an_hour_a_component(
    tmp_path: Path,
) -> None:
    default = load_fleet(write(tmp_path, service_yaml())).service("staging", "payments")
    text = service_yaml(step_timeout_s="30", component_timeout_s="90.5")
    tuned = load_fleet(write(tmp_path, text)).service("staging", "payments")

    assert (default.step_timeout_s, default.component_timeout_s) == (300, 3600)
    assert (tuned.step_timeout_s, tuned.component_timeout_s) == (30, 90.5)


def test_failure_injection_matches_only_what_it_names() -> None:
    anywhere = FailureInjection(step=Step.DEPLOY)
    narrow = FailureInjection(step=Step.DEPLOY, version="2.0", host="h1")

    assert anywhere.matches(Step.DEPLOY, "9.9", "h7")
    assert not anywhere.matches(Step.VERIFY, "9.9", "h7")
    assert narrow.matches(Step.DEPLOY, "2.0", "h1")
    assert not narrow.matches(Step.DEPLOY, "2.1", "h1")
    assert not narrow.matches(Step.DEPLOY, "2.0", "h2")


def test_yaml_merge_keys_may_be_overridden_in_the_mapping_that_merges(tmp_path: Path) -> None:
    text = """\
    environments:
      staging:
        services:
          payments: &base
            hosts: [pay-1]
            strategy: {kind: rolling, batch: 1}
            driver: {kind: simulated, initial_version: 1.0.0}
          ledger:
            <<: *base
            hosts: [ledger-1, ledger-2]
            strategy: {kind: rolling, batch: 2}
    """

    parsed = load_fleet(write(tmp_path, text))

    ledger = parsed.service("staging", "ledger")
    assert ledger.hosts == ("ledger-1", "ledger-2")
    assert ledger.strategy == RollingStrategy(kind="rolling", batch=2)
    assert ledger.driver == parsed.service("staging", "payments").driver


def test_unknown_key_in_a_service_is_named_by_its_path(tmp_path: Path) -> None:
    text = service_yaml(colour="blue")

    assert fleet_problems(tmp_path, text) == [
        ("environments.staging.services.payments.colour", "unknown field")
    ]


def test_duplicate_hosts_are_named_at_the_hosts_field(tmp_path: Path) -> None:
    (problem,) = fleet_problems(tmp_path, service_yaml(hosts="[pay-1, pay-2, pay-1]"))

    assert problem[0] == "environments.staging.services.payments.hosts"
    assert "'pay-1' is listed twice" in problem[1]


def test_failure_injection_naming_an_unknown_host_is_refused(tmp_path: Path) -> None:
    driver = "{kind: simulated, initial_version: 1.0.0, fail: [{step: deploy, host: pay-9}]}"

    (problem,) = fleet_problems(tmp_path, service_yaml(driver=driver))

    assert problem[0] == "environments.staging.services.payments.driver"
    assert "fail[0].host 'pay-9' is not in hosts" in problem[1]


def test_failure_injection_is_not_checked_against_hosts_that_are_themselves_wrong(
    tmp_path: Path,
) -> None:
    driver = "{kind: simulated, initial_version: 1.0.0, fail: [{step: deploy, host: pay-9}]}"

    problems = fleet_problems(tmp_path, service_yaml(hosts="[]", driver=driver))

    assert [path for path, _ in problems] == ["environments.staging.services.payments.hosts"]


@pytest.mark.parametrize(
    ("lines", "path", "reason"),
    [
        ({"hosts": "[]"}, "hosts", "at least 1 item"),
        ({"hosts": "['bad host']"}, "hosts[0]", "'bad host' is not valid here"),
        ({"strategy": "{kind: rolling, batch: two}"}, "strategy.batch", "'two' is not a number"),
        ({"step_timeout_s": "0"}, "step_timeout_s", "greater than 0"),
        ({"component_timeout_s": "700000"}, "component_timeout_s", "less than or equal to 604800"),
        ({"driver": "{kind: ssh, initial_version: 1.0.0}"}, "driver.kind", "unknown kind 'ssh'"),
        ({"driver": "{kind: simulated}"}, "driver.initial_version", "Field required"),
        (
            {"driver": "{kind: simulated, initial_version: 1.0.0, latency_ms: -1}"},
            "driver.latency_ms",
            "greater than or equal to 0",
        ),
        (
            {"driver": "{kind: simulated, initial_version: 1.0.0, fail: [{step: dance}]}"},
            "driver.fail[0].step",
            "'drain', 'deploy', 'verify', 'undrain'",
        ),
    ],
)
def test_bad_service_settings_are_named_by_their_path(
    tmp_path: Path, lines: dict[str, str], path: str, reason: str
) -> None:
    problems = fleet_problems(tmp_path, service_yaml(**lines))

    first_path, first_reason = problems[0]
    assert first_path == f"environments.staging.services.payments.{path}"
    assert reason in first_reason


def test_bad_environment_name_is_named_as_a_key(tmp_path: Path) -> None:
    text = service_yaml().replace("staging:", "Staging:")

    (problem,) = fleet_problems(tmp_path, text)

    assert problem[0] == "environments.Staging"
    assert problem[1].startswith("key: 'Staging' is not valid here")


def test_fleet_without_environments_is_refused(tmp_path: Path) -> None:
    assert fleet_problems(tmp_path, "environments: {}\n") == [
        ("environments", "Dictionary should have at least 1 item after validation, not 0")
    ]


def test_every_problem_in_a_fleet_is_reported_at_once(tmp_path: Path) -> None:
    text = service_yaml(hosts="[pay-1, pay-1]", step_timeout_s="0", colour="red")

    paths = sorted(path for path, _ in fleet_problems(tmp_path, text))

    prefix = "environments.staging.services.payments."
    assert paths == [prefix + "colour", prefix + "hosts", prefix + "step_timeout_s"]


# --- the release --------------------------------------------------------------------------


def test_valid_release_parses_into_a_submit_release(tmp_path: Path) -> None:
    assert load_release(write(tmp_path, RELEASE)) == SubmitRelease(
        environment="staging",
        reason="new fee model",
        components=(
            ComponentRequest(service="ledger", version="3.2.0"),
            ComponentRequest(service="payments", version="2.0.0", depends_on=("ledger",)),
        ),
    )


def test_release_missing_a_version_names_that_component(tmp_path: Path) -> None:
    text = RELEASE.replace("    version: 2.0.0\n", "")

    assert release_problems(tmp_path, text) == [
        ("components[1].version", "Field required (or a flag, for a flag flip)")
    ]


@pytest.mark.parametrize("version", ["'2.0 beta'", "-rc1", "'v1/2'", "''"])
def test_release_with_a_malformed_version_names_it_and_the_pattern(
    tmp_path: Path, version: str
) -> None:
    text = RELEASE.replace("version: 2.0.0", f"version: {version}")

    ((path, reason),) = release_problems(tmp_path, text)

    assert path == "components[1].version"
    assert "is not valid here" in reason
    assert "pattern" in reason


def test_release_version_that_yaml_reads_as_a_number_must_be_quoted(tmp_path: Path) -> None:
    # 2.10 would silently become "2.1" if numbers were turned into strings.
    text = RELEASE.replace("version: 2.0.0", "version: 2.10")

    assert release_problems(tmp_path, text) == [
        (
            "components[1].version",
            "Input should be a valid string; this was read as the number 2.1: put it in quotes",
        )
    ]


def test_release_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    text = RELEASE.replace("depends_on:", "depend_on:")

    assert release_problems(tmp_path, text) == [("components[1].depend_on", "unknown field")]


def test_release_without_components_is_refused(tmp_path: Path) -> None:
    ((path, reason),) = release_problems(tmp_path, "environment: staging\ncomponents: []\n")

    assert path == "components"
    assert reason == "a release needs at least one component"


# --- files that are not YAML mappings at all ---------------------------------------------


@pytest.mark.parametrize("load", [load_fleet, load_release])
def test_missing_file_is_invalid_input_naming_the_file(
    tmp_path: Path, load: Callable[[Path], object]
) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(InvalidInput) as caught:
        load(path)

    assert caught.value.source == str(path)
    assert caught.value.problems == (Problem(path="", reason="No such file or directory"),)


def test_malformed_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    text = "environment: staging\ncomponents:\n  - service: [ledger\n    version: 1.0\n"

    ((path, reason),) = release_problems(tmp_path, text)

    assert path == ""
    assert reason.startswith("malformed YAML at line 4,")


def test_a_tab_in_the_indentation_is_named(tmp_path: Path) -> None:
    text = "environment: staging\ncomponents:\n\t- service: ledger\n"

    assert release_problems(tmp_path, text) == [
        (
            "",
            "malformed YAML at line 3, column 1: found character that cannot start any token"
            " (a tab: YAML indents with spaces)",
        )
    ]


def test_without_libyaml_the_same_files_read_the_same(tmp_path: Path) -> None:
    """PyYAML built without libyaml: its own parser, with the same constructors and checks."""
    files = [
        write(tmp_path, FLEET, "fleet.yaml"),
        write(tmp_path, "environments: {}\nenvironments: {}\n", "twice.yaml"),
        write(tmp_path, "environments:\n\tstaging: {}\n", "tab.yaml"),
    ]
    script = textwrap.dedent(
        """
        import sys
        import yaml
        yaml.__with_libyaml__ = False  # what PyYAML built without libyaml says
        from orchestrator.plans import InvalidInput, load_fleet
        print(load_fleet(sys.argv[1]).model_dump_json())
        for path in sys.argv[2:]:
            try:
                load_fleet(path)
            except InvalidInput as error:
                print(error.problems[0].reason)
        """
    )
    command = [sys.executable, "-c", script, *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)

    fleet_json, twice, tab = done.stdout.splitlines()
    assert Fleet.model_validate_json(fleet_json) == load_fleet(files[0])
    assert twice == "malformed YAML at line 2, column 1: key 'environments' is given twice"
    assert tab == (  # PyYAML's own words, which say what the character is
        "malformed YAML at line 2, column 1: found character '\\t' that cannot start any"
        " token (a tab: YAML indents with spaces)"
    )


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = "environment: staging\ncomponents:\n  - service: a\n    service: b\n    version: 1\n"

    assert release_problems(tmp_path, text) == [
        ("", "malformed YAML at line 4, column 5: key 'service' is given twice")
    ]


def test_duplicate_key_in_a_flow_mapping_is_refused(tmp_path: Path) -> None:
    ((_, reason),) = fleet_problems(tmp_path, "{environments: {}, environments: {}}\n")

    assert reason == "malformed YAML at line 1, column 20: key 'environments' is given twice"


def test_a_list_used_as_a_key_is_invalid_input_not_a_crash(tmp_path: Path) -> None:
    ((path, reason),) = release_problems(tmp_path, "? [a, b]\n: 1\n")

    assert path == ""
    assert reason.startswith("malformed YAML at line 1,")


def test_a_file_that_is_not_utf8_is_invalid_input_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"environments:\n  \xff\xfe: {}\n")

    with pytest.raises(InvalidInput) as caught:
        load_fleet(path)

    (problem,) = caught.value.problems
    assert problem.reason.startswith("not UTF-8 text")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "", "# only a comment\n"])
def test_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    assert fleet_problems(tmp_path, text) == [("", "expected a mapping at the top of the file")]


def test_invalid_input_explains_itself_with_the_file_and_every_problem() -> None:
    error = InvalidInput(
        "release.yaml", [Problem(path="components[0].version", reason="Field required")]
    )

    assert str(error) == "release.yaml: invalid\n  components[0].version: Field required"


# --- planning a release against the fleet -------------------------------------------------


def test_plan_groups_a_diamond_into_waves_in_request_order() -> None:
    request = submit(
        component("web", "api", "auth"),
        component("auth", "db"),
        component("api", "db"),
        component("db"),
    )

    plan = plan_release(fleet("db", "api", "auth", "web"), request)

    assert plan.waves == (("db",), ("auth", "api"), ("web",))
    assert plan.request == request


def test_plan_of_independent_components_is_one_wave() -> None:
    plan = plan_release(
        fleet("a", "b", "c"), submit(component("a"), component("b"), component("c"))
    )

    assert plan.waves == (("a", "b", "c"),)


def test_plan_of_a_chain_is_one_component_per_wave() -> None:
    request = submit(component("c", "b"), component("b", "a"), component("a"))

    assert plan_release(fleet("a", "b", "c"), request).waves == (("a",), ("b",), ("c",))


def test_plan_names_its_source_and_every_problem() -> None:
    request = submit(component("api", "api"), component("ghost"), component("api"))

    with pytest.raises(InvalidInput) as caught:
        plan_release(fleet("api"), request, source="release.yaml")

    assert caught.value.source == "release.yaml"
    assert [p.path for p in caught.value.problems] == [
        "components[1].service",
        "components[2].service",
        "components[0].depends_on[0]",
    ]
    assert "'api' is already components[0]" in caught.value.problems[1].reason


def test_plan_in_an_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        plan_release(fleet("api"), submit(component("api"), environment="moon"))

    assert caught.value.source == "release"
    assert caught.value.problems == (
        Problem(path="environment", reason="unknown environment 'moon' (the fleet has: prod)"),
    )


def test_plan_names_the_services_of_a_cycle_in_order() -> None:
    request = submit(
        component("a"), component("b", "a", "d"), component("c", "b"), component("d", "c")
    )

    with pytest.raises(InvalidInput) as caught:
        plan_release(fleet("a", "b", "c", "d"), request)

    assert caught.value.problems == (
        Problem(path="components", reason="dependency cycle: b -> d -> c -> b"),
    )


def _long_fleet(size: int) -> Fleet:
    service = {"hosts": ["h1"], "driver": {"kind": "simulated", "initial_version": "1.0"}}
    services = {f"s{i}": service for i in range(size)}
    return Fleet.model_validate({"environments": {"prod": {"services": services}}})


def test_a_long_chain_listed_top_first_is_planned_without_running_out_of_stack() -> None:
    size = 3000  # well past Python's default recursion limit
    components = [component(f"s{i}", f"s{i + 1}") for i in range(size - 1)]
    request = submit(*components, component(f"s{size - 1}"))

    plan = plan_release(_long_fleet(size), request)

    assert len(plan.waves) == size
    assert plan.waves[0] == (f"s{size - 1}",)


def test_a_long_cycle_is_found_without_running_out_of_stack() -> None:
    size = 3000
    request = submit(*(component(f"s{i}", f"s{(i + 1) % size}") for i in range(size)))

    with pytest.raises(InvalidInput) as caught:
        plan_release(_long_fleet(size), request)

    (problem,) = caught.value.problems
    assert problem.path == "components"
    assert problem.reason.startswith("dependency cycle: s0 -> s1 -> s2")
    assert problem.reason.endswith(f"s{size - 1} -> s0")
