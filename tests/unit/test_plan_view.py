"""``drover plan``: a release's waves, stages, approvals and compensations, worked out
from the files alone."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.contract import ComponentRequest, SubmitRelease
from orchestrator.fleet import Fleet
from orchestrator.plan_view import plan_lines, plan_view
from orchestrator.plans import InvalidInput

SIMULATED = {"kind": "simulated", "initial_version": "1.0.0"}
FLEET = Fleet.model_validate(
    {
        "environments": {
            "prod": {
                "approval": {"required": True, "separate_approver": True},
                "metrics": {"sim": {"kind": "simulated", "metrics": {"errors": {"value": 1}}}},
                "services": {
                    "db": {
                        "hosts": ["db-1", "db-2", "db-3", "db-4"],
                        "driver": SIMULATED,
                        "strategy": {
                            "kind": "blue_green",
                            "blue": ["db-1", "db-2"],
                            "green": ["db-3", "db-4"],
                        },
                    },
                    "api": {
                        "hosts": ["api-1", "api-2", "api-3", "api-4"],
                        "driver": SIMULATED,
                        "requires_approval": True,
                        "strategy": {
                            "kind": "canary",
                            "batch": 2,
                            "min_healthy": "50%",
                            "steps": [
                                {"hosts": 1},
                                {"bake_s": 60},
                                {
                                    "analysis": {
                                        "gates": [
                                            {
                                                "name": "errors",
                                                "source": "sim",
                                                "target": "errors:{group}",
                                                "max_ratio_to_baseline": 1.5,
                                            }
                                        ]
                                    }
                                },
                            ],
                        },
                    },
                    "cache": {"hosts": ["cache-1", "cache-2", "cache-3"], "driver": SIMULATED},
                },
            }
        }
    }
)


def release(*components: dict[str, Any]) -> SubmitRelease:
    return SubmitRelease(
        environment="prod",
        components=tuple(ComponentRequest.model_validate(c) for c in components),
    )


PLAN = plan_view(
    FLEET,
    release(
        {"service": "db", "version": "2.0.0"},
        {"service": "cache", "version": "2.0.0"},
        {"service": "api", "version": "2.0.0", "depends_on": ["db"]},
        {"service": "api", "flag": "fast-path", "depends_on": ["api"]},
    ),
)


def component(name: str) -> dict[str, Any]:
    return next(c for wave in PLAN["waves"] for c in wave if c["component"] == name)


def test_components_come_in_dependency_waves() -> None:
    names = [[c["component"] for c in wave] for wave in PLAN["waves"]]

    assert names == [["db", "cache"], ["api"], ["api.fast-path"]]


def test_each_strategy_is_unfolded_into_the_stages_a_worker_will_run() -> None:
    db, api, cache = component("db"), component("api"), component("cache")

    assert db["stages"] == [
        {"stage": "batch", "number": 1, "hosts": ["db-3", "db-4"], "drain": False},
        {"stage": "switch", "to": "green"},
    ]
    assert [s["stage"] for s in api["stages"]] == ["batch", "bake", "analysis", "batch", "batch"]
    assert api["stages"][2] == {
        "stage": "analysis",
        "number": 1,
        "gates": ["errors"],
        "canary": ["api-1"],
    }
    assert [s["hosts"] for s in api["stages"] if s["stage"] == "batch"] == [
        ["api-1"],
        ["api-2", "api-3"],  # the floor of 50% of 4 allows two out at once
        ["api-4"],
    ]
    assert [s["hosts"] for s in cache["stages"]] == [["cache-1"], ["cache-2"], ["cache-3"]]
    assert component("api.fast-path")["stages"] == []


def test_approvals_are_shown_for_the_release_and_for_components() -> None:
    assert PLAN["approval"] == {"before_start": True, "approver_not_requester": True}
    assert component("api")["requires_approval"] is True
    assert component("db")["requires_approval"] is False


def test_a_failure_at_each_component_names_what_would_be_undone_and_in_what_order() -> None:
    assert component("db")["if_it_fails"] == {
        "own": "traffic is switched back if it moved; the idle colour is left as it is",
        "then_rolled_back": [],
        "if_they_finish_first": ["cache"],
    }
    assert component("api.fast-path")["if_it_fails"]["then_rolled_back"] == [
        ["api"],
        ["db", "cache"],
    ]
    assert component("api.fast-path")["if_it_fails"]["own"] == "the flag is left as it was"


def test_the_text_reads_in_the_order_things_happen() -> None:
    lines = list(plan_lines(PLAN))

    assert lines[0] == "release to prod: 4 components in 3 waves"
    assert (
        lines[1] == "  waits for an approval from someone other than the requester before it starts"
    )
    assert "    bake 60 s" in lines
    assert "    analysis 1 (canary api-1 against the rest): errors" in lines
    assert "    if it fails: the flag is left as it was; then rolled back: api; db, cache" in lines


def test_a_release_the_fleet_refuses_has_no_plan() -> None:
    with pytest.raises(InvalidInput) as refused:
        plan_view(FLEET, release({"service": "nope", "version": "1.0"}))

    assert "unknown service 'nope'" in str(refused.value)
