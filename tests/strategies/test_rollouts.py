"""Strategies against the fleet simulator: the healthy floor, canaries, blue/green, drains
and gates. The simulator keeps the most hosts it ever had out of service at once."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.fleet import Fleet
from orchestrator.fleet.base import hosts_in
from orchestrator.store import PEAK_DRAINED, Store, open_store
from orchestrator.vocabulary import Step
from tests.strategies.rollouts import ENVIRONMENT, Rollout

OLD, NEW = "1.0.0", "2.0.0"
_releases = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("rollouts") / "store.db"
    opened = open_store(f"sqlite:///{path}")
    yield opened
    opened.close()


def rollout(store: Store, hosts: int, strategy: dict[str, Any], **service: Any) -> Rollout:
    """A fresh service (its own name, so nothing is shared between examples)."""
    name = f"svc{next(_releases)}"
    driver = {"kind": "simulated", "initial_version": OLD, **service.pop("driver", {})}
    data = {
        "hosts": [f"h{i}" for i in range(1, hosts + 1)],
        "driver": driver,
        "strategy": strategy,
        **service,
    }
    environment: dict[str, Any] = {"services": {name: data}}
    if "gates" in service or strategy.get("kind") == "canary":
        environment["metrics"] = {"sim": {"kind": "simulated", "metrics": {"errors": {"value": 0}}}}
    fleet = Fleet.model_validate({"environments": {ENVIRONMENT: environment}})
    return Rollout(fleet, store, name, release_id=f"R-{name}")


def peak(run: Rollout) -> int:
    return int(run.store.service_state(ENVIRONMENT, run.service).get(PEAK_DRAINED, 0))


amounts = st.one_of(st.integers(1, 12), st.integers(1, 100).map(lambda p: f"{p}%"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hosts=st.integers(2, 12),
    batch=amounts,
    floor=st.one_of(st.integers(0, 11), st.integers(0, 99).map(lambda p: f"{p}%")),
    failing=st.one_of(st.none(), st.tuples(st.integers(1, 12), st.sampled_from(list(Step)[:4]))),
)
def test_the_healthy_floor_is_never_breached(
    store: Store, hosts: int, batch: int | str, floor: int | str, failing: tuple[int, Step] | None
) -> None:
    assume(hosts_in(floor, hosts, at_least_one=False) < hosts)  # else refused by the file
    fail = []
    if failing is not None and failing[0] <= hosts:
        fail = [{"step": failing[1], "version": NEW, "host": f"h{failing[0]}"}]
    if failing is not None and failing[1] in (Step.DRAIN, Step.UNDRAIN):
        fail = [{"step": failing[1], "version": OLD, "host": f"h{min(failing[0], hosts)}"}]
    strategy = {"kind": "rolling", "batch": batch, "min_healthy": floor}
    run = rollout(store, hosts, strategy, driver={"fail": fail})
    config = run.config.strategy
    assert config.kind == "rolling"

    result = run.out(NEW)

    assert peak(run) <= hosts - config.floor(hosts)  # at every moment, by the simulator
    if result.failure is None:
        assert set(run.versions().values()) == {NEW}
    elif result.restored:
        assert set(run.versions().values()) == {OLD}  # everything touched was put back
    assert run.store.drained_hosts(ENVIRONMENT, run.service) == set() or not result.restored


def test_a_floor_shrinks_the_batch_rather_than_breach(store: Store) -> None:
    run = rollout(store, 4, {"kind": "rolling", "batch": "100%", "min_healthy": "75%"})

    assert run.out(NEW).failure is None
    assert peak(run) == 1  # 3 of 4 hosts served throughout


def test_a_drain_waits_for_in_flight_requests_and_says_how_long(store: Store) -> None:
    run = rollout(
        store,
        2,
        {"kind": "rolling", "drain_timeout_s": 5},
        driver={"in_flight": 3, "request_ms": 20},
    )

    run.out(NEW)

    drains = [s for s in run.story.said if s[0] == "drained"]
    assert drains == [("drained", "h1", 0, False), ("drained", "h2", 0, False)]


def test_a_drain_that_outlasts_its_timeout_goes_on_and_says_what_was_left(store: Store) -> None:
    run = rollout(
        store,
        2,
        {"kind": "rolling", "drain_timeout_s": 0.1},
        driver={"in_flight": 5, "request_ms": 60_000},
    )

    assert run.out(NEW).failure is None
    (first, *_) = [s for s in run.story.said if s[0] == "drained"]
    assert first == ("drained", "h1", 5, True)


# --- canary -------------------------------------------------------------------------------

CANARY = {
    "kind": "canary",
    "batch": 2,
    "steps": [
        {"hosts": 1},
        {"bake_s": 0},
        {
            "analysis": {
                "gates": [{"name": "errors", "source": "sim", "target": "errors", "max": 1}]
            }
        },
        {"hosts": "50%"},
    ],
}


def test_a_canary_moves_a_few_hosts_bakes_analyses_then_rolls_out_the_rest(store: Store) -> None:
    run = rollout(store, 6, CANARY)

    assert run.out(NEW).failure is None

    moved = [s[3] for s in run.story.said if s[:2] == ("succeeded", Step.DEPLOY)]
    assert moved == [("h1",), ("h2", "h3"), ("h4", "h5"), ("h6",)]
    batch = [Step.DRAIN, Step.DEPLOY, Step.VERIFY, Step.UNDRAIN]
    order = [step for what, step in run.story.steps() if what == "succeeded"]
    assert order == [*batch, Step.BAKE, Step.ANALYSE, *batch * 3]
    assert set(run.versions().values()) == {NEW}


def test_a_failed_analysis_puts_the_canary_back(store: Store) -> None:
    run = rollout(store, 6, CANARY)
    run.verdicts = ["fail"]

    result = run.out(NEW)

    assert result.failure is not None and result.failure.startswith("analyse failed")
    assert result.restored
    assert set(run.versions().values()) == {OLD}
    assert run.effects("deploy") == 1  # only the canary host had moved
    assert run.effects("rollback.deploy") == 1


def test_an_inconclusive_analysis_waits_for_a_human_and_goes_on_when_approved(
    store: Store,
) -> None:
    run = rollout(store, 4, CANARY)
    run.verdicts = ["inconclusive"]

    assert run.out(NEW).failure is None
    assert run.holds == ["analysis-1"]


def test_an_inconclusive_analysis_that_is_aborted_puts_the_canary_back(store: Store) -> None:
    run = rollout(store, 4, CANARY)
    run.verdicts = ["inconclusive"]
    run.stop_on_hold = "release aborted by alice"

    result = run.out(NEW)

    assert result.failure == "release aborted by alice"
    assert set(run.versions().values()) == {OLD}


def test_gates_that_fail_after_the_last_batch_put_every_host_back(store: Store) -> None:
    gates = [{"name": "errors", "source": "sim", "target": "errors", "max": 1, "window_s": 0.01}]
    run = rollout(store, 3, {"kind": "rolling"}, gates=gates)
    run.verdicts = ["fail"]

    result = run.out(NEW)

    assert result.failure is not None and "gate failed" in result.failure
    assert set(run.versions().values()) == {OLD}


# --- blue/green ---------------------------------------------------------------------------

BLUE_GREEN = {"kind": "blue_green", "blue": ["h1", "h2"], "green": ["h3", "h4"]}


def test_blue_green_deploys_the_idle_colour_and_switches_traffic_to_it(store: Store) -> None:
    run = rollout(store, 4, BLUE_GREEN)

    assert run.out(NEW, live="blue").failure is None

    assert run.versions() == {"h1": OLD, "h2": OLD, "h3": NEW, "h4": NEW}
    assert run.driver().live_colour() == "green"
    assert peak(run) == 0  # nothing serving was ever drained


def test_rolling_back_blue_green_is_a_switch_not_a_redeploy(store: Store) -> None:
    run = rollout(store, 4, BLUE_GREEN)
    run.out(NEW, live="blue")

    assert run.back({"h1": OLD, "h2": OLD, "h3": OLD, "h4": OLD}, live="blue").error is None

    assert run.driver().live_colour() == "blue"
    assert run.effects("rollback.deploy") == 0
    assert run.effects("rollback.switch") == 1
    assert run.versions()["h3"] == NEW  # the idle colour stays as it was, one switch away


def test_blue_green_that_fails_before_the_switch_leaves_traffic_where_it_was(
    store: Store,
) -> None:
    run = rollout(
        store, 4, BLUE_GREEN, driver={"fail": [{"step": "verify", "version": NEW, "host": "h4"}]}
    )

    result = run.out(NEW, live="blue")

    assert result.failure is not None and result.restored
    assert run.driver().live_colour() is None  # never switched: blue serves as before
    assert run.effects("switch") == 0
