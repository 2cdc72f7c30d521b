"""A worker whose lease another worker took while its simulated changes waited to be
committed (a freeze, a long pause): none of its changes after the takeover is made or
journaled, and it stops as it does when it finds its lease lost, reporting nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.contract import ComponentDeployed, DeployComponent, envelope
from orchestrator.store import Effect, Pending, Store
from tests.support.runner import web_deploy
from workers.tasks import ComponentRunner, WorkerLimits, work_key


class TakenOverAtWeb2:
    """The worker's store, where another worker takes the component's lease just before
    web-2 is drained (as if this worker froze there for longer than the lease lasts)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def set_drained(
        self, environment: str, service: str, host: str, drained: bool, effect: Effect | None
    ) -> Pending[bool]:
        if host == "web-2" and drained and effect is not None and effect.under is not None:
            self._store.release_lease(effect.under.lease, effect.under.owner)
            assert self._store.acquire_lease(effect.under.lease, "worker-b/1", 60)
        return self._store.set_drained(environment, service, host, drained, effect)


def test_no_change_of_a_worker_whose_lease_was_taken_over_is_made(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, _, command):
        store = parts.store
        runner = ComponentRunner(parts.fleet, TakenOverAtWeb2(store), parts.bus, WorkerLimits())  # type: ignore[arg-type]

        runner.deploy(command.to_wire())  # returns: the worker that took over finishes it

        work = work_key(command)
        assert store.lease_holder("component/r1/web") == "worker-b/1"
        assert store.outcome(work) is None  # nothing reported as this command's end
        assert store.host_versions("staging", "web") == {"web-1": "2.0.0"}
        assert store.drained_hosts("staging", "web") == set()
        assert set(store.progress(work)) == {"web-1"}
        assert {host for (_, _, host, _) in store.effects("r1")} == {"web-1"}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store: on Redis a change made ahead is sent before its answer is read."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/store.db"


def test_the_thread_of_a_worker_taken_over_carries_out_its_next_command(
    tmp_path: Path, store_url: str, namespace: str
) -> None:
    with web_deploy(tmp_path, namespace, store_url=store_url) as (parts, _, command):
        store = parts.store
        taken_over = ComponentRunner(parts.fleet, TakenOverAtWeb2(store), parts.bus, WorkerLimits())  # type: ignore[arg-type]
        taken_over.deploy(command.to_wire())
        assert store.outcome(work_key(command)) is None

        # The same thread and store, the next release's command: none of the refusals
        # met by the one before is this one's.
        after = envelope(
            DeployComponent(environment="staging", service="web", version="3.0.0"),
            release_id="r2",
            actor="test",
        )
        ComponentRunner(parts.fleet, store, parts.bus, WorkerLimits()).deploy(after.to_wire())

        outcome = store.outcome(work_key(after))
        assert outcome is not None and isinstance(outcome.payload, ComponentDeployed)
        assert store.host_versions("staging", "web")["web-2"] == "3.0.0"
