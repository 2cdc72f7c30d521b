"""Strategies, approvals and real drivers end to end: a coordinator and workers as real
processes over Redis, then RabbitMQ, driven through the ``drover`` command.

The fleet (written per broker, for the paths and ports it names) has a rolling service
with a healthy floor and slow drains, canaries whose analysis passes, fails or cannot
tell, a blue/green service, a service with a feature flag, an environment whose
releases need another person's approval, a service moved by shell scripts the test
writes, and one moved over HTTP through a real local load balancer and host agents.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.contract import Envelope, StepStarted
from orchestrator.store import PEAK_DRAINED, Store, open_store
from orchestrator.vocabulary import Step
from tests.conftest import REDIS_URL
from tests.e2e.cluster import BROKERS, Cluster, running_cluster
from tests.e2e.scenarios import drover
from tests.support.graphite_server import GraphiteServer
from tests.support.lb_server import LoadBalancer, loopback_hosts

pytestmark = pytest.mark.broker

REQUESTER = "ci-bot"
APPROVER = "bob"
EDGE_HOSTS = loopback_hosts(4, first=20)

# A version named in the file "broken" fails its verify: the thing a person fixes. A
# deploy takes a second, and waits while the file "held" is there: a test lands a pause
# in the middle of a batch however long its command takes to start.
TOOL_SCRIPT = """#!/bin/sh
# tool HOST ACTION [VERSION]: a tiny fleet kept in files next to this script.
here="$(dirname "$0")"; mkdir -p "$here/state"
case "$2" in
  version) cat "$here/state/$1" 2>/dev/null || echo 1.0.0 ;;
  deploy) while [ -e "$here/held" ]; do sleep 0.05; done
          sleep 1; echo "$3" > "$here/state/$1"; echo "deployed $3 to $1" ;;
  verify) if [ "$(cat "$here/broken" 2>/dev/null)" = "$3" ]; then
            echo "$1 answers 500"; exit 3
          fi ;;
  drain|undrain) echo "$2 $1" ;;
esac
"""


def simulated(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"kind": "simulated", "initial_version": version, **extra}


def canary(*gates: dict[str, Any]) -> dict[str, Any]:
    steps = [{"hosts": 1}, {"bake_s": 0.2}, {"analysis": {"gates": list(gates)}}]
    return {"kind": "canary", "batch": 2, "steps": steps}


def fleet_data(tool: Path, lb: LoadBalancer, graphite: GraphiteServer) -> dict[str, Any]:
    errors = {"name": "errors", "source": "sim", "target": "errors:{group}"}
    sim = {
        "kind": "simulated",
        "metrics": {
            # One error a minute per host; a bad build makes ten.
            "errors": {"value": 1, "by_version": {"2.0.0-bad": 10}},
            "latency": {"value": 20},
        },
    }
    services: dict[str, Any] = {
        "web": {
            "hosts": ["web-1", "web-2", "web-3", "web-4"],
            "strategy": {"kind": "rolling", "batch": "50%", "min_healthy": "75%"},
            "driver": simulated(
                in_flight=3,
                request_ms=30,
                fail=[{"step": "verify", "version": "9.9.9-broken", "host": "web-2"}],
            ),
        },
        "api": {
            "hosts": ["api-1", "api-2", "api-3", "api-4"],
            "strategy": canary({**errors, "max_ratio_to_baseline": 1.5}),
            "driver": simulated(),
        },
        "pricing": {
            "hosts": ["pricing-1", "pricing-2", "pricing-3"],
            # Asks for more points than a fresh canary can have: always inconclusive.
            "strategy": canary(
                {
                    "name": "latency",
                    "source": "sim",
                    "target": "latency",
                    "max": 100,
                    "min_points": 1000,
                }
            ),
            "driver": simulated(),
        },
        "db": {
            "hosts": ["db-b1", "db-b2", "db-g1", "db-g2"],
            "strategy": {
                "kind": "blue_green",
                "blue": ["db-b1", "db-b2"],
                "green": ["db-g1", "db-g2"],
            },
            "driver": simulated(),
        },
        "cart": {"hosts": ["cart-1", "cart-2"], "driver": simulated()},
        "shop": {
            "hosts": ["shop-1", "shop-2"],
            "driver": simulated(),
            # Checkouts a minute after the deploy against the same time before it.
            "gates": [
                {
                    "name": "checkouts",
                    "source": "graphite",
                    "target": "sumSeries(stats.{environment}.{service}.checkouts)",
                    # Wide enough that the window before the deploy reaches back to before
                    # the test turned checkouts off, however long the deploy took to start.
                    "window_s": 8,
                    "min_ratio_to_before": 0.5,
                }
            ],
        },
        "tool": {
            "hosts": ["tool-1", "tool-2", "tool-3"],
            "driver": {
                "kind": "shell",
                "timeout_s": 20,
                "commands": {
                    action: [
                        str(tool),
                        "{host}",
                        action,
                        *(["{version}"] if action in ("deploy", "verify") else []),
                    ]
                    for action in ("version", "drain", "deploy", "verify", "undrain")
                },
            },
        },
        "edge": {
            "hosts": EDGE_HOSTS,
            "strategy": {"kind": "rolling", "batch": 1, "min_healthy": 3, "drain_timeout_s": 10},
            "driver": lb.driver_settings(timeout_s=2, retries=2, backoff_s=0.05),
            "health": {
                "checks": [
                    {"kind": "http", "url": lb.agent_url + "/services/edge/health", "body": "true"}
                ],
                "retries": 2,
                "interval_s": 0.1,
            },
        },
    }
    return {
        "environments": {
            "staging": {
                "services": services,
                "metrics": {"sim": sim, "graphite": {"kind": "graphite", "url": graphite.url}},
            },
            "prod": {
                "services": {"cart": {"hosts": ["pcart-1"], "driver": simulated()}},
                "approval": {"required": True, "separate_approver": True},
            },
        }
    }


@dataclass
class Stage:
    """A broker's running cluster, with what the tests reach into."""

    cluster: Cluster
    lb: LoadBalancer
    graphite: GraphiteServer
    tool_dir: Path
    path: Path

    @property
    def env(self) -> dict[str, str]:
        return self.cluster.env

    def release(self, *components: dict[str, Any], environment: str = "staging") -> Path:
        name = f"release-{time.monotonic_ns()}.yaml"
        data = {"environment": environment, "reason": "e2e", "components": list(components)}
        path = self.path / name
        path.write_text(yaml.safe_dump(data))
        return path

    def submit(self, release: Path, *, wait: bool = True, actor: str = REQUESTER) -> dict[str, Any]:
        args = ["release", "submit", str(release), "--json", "--actor", actor, "--timeout", "90"]
        result = drover(*args, *(["--wait"] if wait else []), env=self.env)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def show(self, release_id: str) -> dict[str, Any]:
        result = drover("release", "show", release_id, "--json", env=self.env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def until(self, release_id: str, *states: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = self.show(release_id)
            if view["state"] in states:
                return view
            time.sleep(0.2)
        raise AssertionError(
            f"{release_id} is {view['state']}, not {states}; logs in {self.cluster.logs}"
        )

    def store(self) -> Store:
        return open_store(REDIS_URL, namespace=self.env["DROVER_NAMESPACE"])


@pytest.fixture(scope="module", params=sorted(BROKERS))
def stage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp(f"strategies-{request.param}")
    tool = base / "tool"
    tool.write_text(TOOL_SCRIPT)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    with LoadBalancer({"edge": EDGE_HOSTS}, version="1.0.0") as lb, GraphiteServer() as graphite:
        fleet = base / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_data(tool, lb, graphite)))
        workers = {"worker-all": ("all",)}
        with running_cluster(request.param, base, fleet=fleet, workers=workers) as cluster:
            yield Stage(cluster, lb, graphite, base, base)


def events(view: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in view["timeline"] if e["type"] == kind]


def payloads(view: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return events(view, kind)  # a timeline entry holds its payload's fields


# --- rolling ------------------------------------------------------------------------------


def test_rolling_keeps_the_floor_and_waits_for_drains(stage: Stage) -> None:
    view = stage.submit(stage.release({"service": "web", "version": "2.0.0"}))

    assert view["state"] == "succeeded"
    drains = payloads(view, "HostDrained")
    assert sorted(d["host"] for d in drains) == ["web-1", "web-2", "web-3", "web-4"]
    assert all(d["in_flight_left"] == 0 and not d["timed_out"] for d in drains)
    store = stage.store()
    try:
        # 75% of 4 must serve: one host at a time, though the batch asked for two.
        assert int(store.service_state("staging", "web")[PEAK_DRAINED]) == 1
    finally:
        store.close()


# --- canary -------------------------------------------------------------------------------


def test_a_canary_that_passes_its_analysis_rolls_out(stage: Stage) -> None:
    view = stage.submit(stage.release({"service": "api", "version": "2.0.0"}))

    assert view["state"] == "succeeded"
    (judged,) = payloads(view, "GateJudged")
    assert (judged["step"], judged["gate"], judged["verdict"]) == ("analyse", "errors", "pass")
    assert judged["inputs"]["value"] == 1 and judged["inputs"]["baseline"] == 3


def test_a_canary_that_fails_its_analysis_rolls_the_release_back(stage: Stage) -> None:
    release = stage.release(
        {"service": "cart", "version": "2.1.0"},
        {"service": "api", "version": "2.0.0-bad", "depends_on": ["cart"]},
    )
    view = stage.submit(release)

    assert view["state"] == "rolled_back"
    (judged,) = payloads(view, "GateJudged")
    assert judged["verdict"] == "fail"
    assert [p["service"] for p in payloads(view, "RollbackComponent")] == ["cart"]
    hosts = json.loads(drover("fleet", "--json", env=stage.env).stdout)["staging"]
    assert set(hosts["api"].values()) == {"2.0.0"}  # the canary went back to what ran before


def test_an_inconclusive_canary_waits_for_approval(stage: Stage) -> None:
    view = stage.submit(stage.release({"service": "pricing", "version": "2.0.0"}), wait=False)
    release_id = view["id"]

    paused = stage.until(release_id, "paused")
    (asked,) = [p for p in payloads(paused, "ApprovalRequested") if p["component"] == "pricing"]
    assert "inconclusive" in asked["reason"]

    approved = drover("approve", release_id, "--actor", APPROVER, env=stage.env)

    assert approved.returncode == 0, approved.stderr
    assert stage.until(release_id, "succeeded")["state"] == "succeeded"


def test_an_inconclusive_canary_that_is_aborted_is_rolled_back(stage: Stage) -> None:
    view = stage.submit(stage.release({"service": "pricing", "version": "3.0.0"}), wait=False)
    stage.until(view["id"], "paused")

    aborted = drover("abort", view["id"], "--actor", APPROVER, "--reason", "no", env=stage.env)

    assert aborted.returncode == 0, aborted.stderr
    ended = stage.until(view["id"], "rolled_back")
    (failed,) = payloads(ended, "ComponentFailed")
    assert failed["restored"] and "aborted by bob" in failed["reason"]


# --- blue/green and flags -----------------------------------------------------------------


def test_rolling_back_blue_green_switches_back_without_a_deploy(stage: Stage) -> None:
    release = stage.release(
        {"service": "db", "version": "2.0.0"},
        {"service": "web", "version": "9.9.9-broken", "depends_on": ["db"]},
    )
    view = stage.submit(release)

    assert view["state"] == "rolled_back"
    steps = [
        (p["step"], p["rollback"]) for p in payloads(view, "StepSucceeded") if p["service"] == "db"
    ]
    assert ("switch", False) in steps and ("switch", True) in steps
    assert ("deploy", True) not in steps  # the colour that served was never touched
    store = stage.store()
    try:
        effects = store.effects(view["id"])
    finally:
        store.close()
    assert not [k for k in effects if k[1] == "db" and k[3] == "rollback.deploy"]


def test_a_flag_flip_after_its_deploy_is_flipped_back_when_the_release_fails(
    stage: Stage,
) -> None:
    release = stage.release(
        {"service": "cart", "version": "3.0.0"},
        {"service": "cart", "flag": "new-checkout", "depends_on": ["cart"]},
        {"service": "web", "version": "9.9.9-broken", "depends_on": ["cart.new-checkout"]},
    )
    view = stage.submit(release)

    assert view["state"] == "rolled_back"
    flips = [(p["enabled"], p["undo"]) for p in payloads(view, "FlagToggled")]
    assert flips == [(True, False), (False, True)]
    store = stage.store()
    try:
        assert store.service_state("staging", "cart")["flag:new-checkout"] == "off"
    finally:
        store.close()


# --- metric gates over Graphite -----------------------------------------------------------

CHECKOUTS = "sumSeries(stats.staging.shop.checkouts)"


def checkouts_from_now(stage: Stage, after: float) -> None:
    """120 checkouts a minute until now, then ``after``: one point a second, as StatsD sends."""
    now = int(time.time())
    past = [(t, 120.0) for t in range(now - 120, now + 1)]
    stage.graphite.replace(CHECKOUTS, past + [(t, after) for t in range(now + 1, now + 120)])


def test_a_deploy_that_flat_lines_checkouts_is_rolled_back(stage: Stage) -> None:
    checkouts_from_now(stage, after=0.0)

    view = stage.submit(stage.release({"service": "shop", "version": "2.0.0"}))

    assert view["state"] == "rolled_back"
    (judged,) = payloads(view, "GateJudged")
    assert (judged["gate"], judged["verdict"]) == ("checkouts", "fail")
    assert judged["inputs"]["value"] == 0 and judged["inputs"]["before"] > 0
    assert judged["thresholds"]["min_ratio_to_before"] == 0.5
    hosts = json.loads(drover("fleet", "--json", env=stage.env).stdout)["staging"]["shop"]
    assert set(hosts.values()) == {"1.0.0"}
    light = json.loads(drover("status", "--json", env=stage.env).stdout)
    flat = [r for r in light["reasons"] if r["what"] == "business signal flat-lined"]
    assert light["light"] == "red"
    assert flat and "shop checkouts" in flat[0]["detail"]


def test_a_deploy_that_keeps_checkouts_going_passes_its_gate(stage: Stage) -> None:
    checkouts_from_now(stage, after=117.0)

    view = stage.submit(stage.release({"service": "shop", "version": "2.0.1"}))

    assert view["state"] == "succeeded"
    (judged,) = payloads(view, "GateJudged")
    assert judged["verdict"] == "pass"
    assert [r.params["target"] for r in stage.graphite.requests][-2:] == [[CHECKOUTS]] * 2


# --- people -------------------------------------------------------------------------------


def test_prod_needs_an_approver_who_is_not_the_requester(stage: Stage) -> None:
    view = stage.submit(
        stage.release({"service": "cart", "version": "2.0.0"}, environment="prod"), wait=False
    )
    release_id = view["id"]
    stage.until(release_id, "awaiting_approval")

    own = drover("approve", release_id, "--actor", REQUESTER, env=stage.env)
    assert own.returncode == 2
    assert "needs another approver" in own.stderr

    other = drover("approve", release_id, "--actor", APPROVER, env=stage.env)
    assert other.returncode == 0, other.stderr
    ended = stage.until(release_id, "succeeded")
    assert [e["actor"] for e in events(ended, "ApproveRelease")] == [REQUESTER, APPROVER]


def test_pause_stops_between_batches_and_resume_goes_on(stage: Stage) -> None:
    held = stage.tool_dir / "held"
    held.touch()  # the first batch's deploy waits until the pause is in
    view = stage.submit(stage.release({"service": "tool", "version": "4.0.0"}), wait=False)
    release_id = view["id"]
    store = stage.store()
    try:
        while not [m for m in store.timeline(release_id) if _deploy_started(m)]:
            time.sleep(0.05)  # the first batch is under way
        paused = drover("pause", release_id, "--actor", APPROVER, env=stage.env)
        assert paused.returncode == 0, paused.stderr
        stage.until(release_id, "paused")
        held.unlink()
        time.sleep(4)  # time enough for every batch, had the worker not stopped
        before = stage.show(release_id)
    finally:
        held.unlink(missing_ok=True)
        store.close()
    assert before["state"] == "paused"
    deployed = [p for p in payloads(before, "StepSucceeded") if p["step"] == "deploy"]
    assert len(deployed) < 3  # it stopped at a batch's end, and waits

    resumed = drover("resume", release_id, "--actor", APPROVER, env=stage.env)
    assert resumed.returncode == 0, resumed.stderr
    assert stage.until(release_id, "succeeded")["state"] == "succeeded"


def _deploy_started(message: Envelope) -> bool:
    return isinstance(message.payload, StepStarted) and message.payload.step is Step.DEPLOY


def test_a_release_that_failed_is_retried_after_the_fix(stage: Stage) -> None:
    broken = stage.tool_dir / "broken"
    broken.write_text("5.0.0\n")
    view = stage.submit(stage.release({"service": "tool", "version": "5.0.0"}))
    assert view["state"] == "rolled_back"
    (failure,) = [p for p in payloads(view, "StepFailed") if not p["rollback"]]
    assert "answers 500" in failure["output"]  # the script's own words, in the timeline

    broken.unlink()  # the fix
    retried = drover("retry", view["id"], "--actor", APPROVER, env=stage.env)

    assert retried.returncode == 0, retried.stderr
    ended = stage.until(view["id"], "succeeded")
    assert [p["attempt"] for p in payloads(ended, "ReleaseRetried")] == [2]
    state = stage.tool_dir / "state"
    assert {f.read_text().strip() for f in state.iterdir()} == {"5.0.0"}


# --- over HTTP ----------------------------------------------------------------------------


def test_an_http_fleet_drains_deploys_and_checks_health_through_its_apis(stage: Stage) -> None:
    stage.lb.hold_requests("edge", EDGE_HOSTS[0], count=2, finish_every_s=0.2)

    view = stage.submit(stage.release({"service": "edge", "version": "2.0.0"}))

    assert view["state"] == "succeeded", view["failure"]
    assert {stage.lb.host("edge", h).version for h in EDGE_HOSTS} == {"2.0.0"}
    assert stage.lb.most_not_serving("edge") == 1  # min_healthy 3 of 4
    first = next(p for p in payloads(view, "HostDrained") if p["host"] == EDGE_HOSTS[0])
    assert first["in_flight_left"] == 0 and first["waited_ms"] > 0


def test_a_host_that_turns_unhealthy_is_kept_out_of_service_and_named(stage: Stage) -> None:
    sick = EDGE_HOSTS[1]
    before = stage.lb.host("edge", EDGE_HOSTS[0]).version
    stage.lb.set_health("edge", sick, False)
    try:
        view = stage.submit(stage.release({"service": "edge", "version": "3.0.0"}))
    finally:
        stage.lb.set_health("edge", sick, True)

    # Put back on its old version, it is still unhealthy: it stays drained, and a human
    # is told which host; the host before it went back and serves.
    assert view["state"] == "failed"
    assert sick in view["failure"]
    assert stage.lb.host("edge", EDGE_HOSTS[0]).version == before
    assert stage.lb.host("edge", EDGE_HOSTS[0]).state == "serving"
    assert stage.lb.host("edge", sick).state != "serving"


def test_every_strategy_has_a_plan(stage: Stage) -> None:
    release = stage.release(
        {"service": "db", "version": "2.0.0"},
        {"service": "api", "version": "2.0.0", "depends_on": ["db"]},
        {"service": "api", "flag": "fast-path", "depends_on": ["api"]},
    )
    plan = drover("plan", str(release), "--json", env=stage.env)

    assert plan.returncode == 0, plan.stderr
    waves = json.loads(plan.stdout)["waves"]
    assert [[c["component"] for c in wave] for wave in waves] == [
        ["db"],
        ["api"],
        ["api.fast-path"],
    ]
    assert [s["stage"] for s in waves[1][0]["stages"]] == [
        "batch",
        "bake",
        "analysis",
        "batch",
        "batch",
    ]
    assert waves[2][0]["if_it_fails"]["then_rolled_back"] == [["api"], ["db"]]
