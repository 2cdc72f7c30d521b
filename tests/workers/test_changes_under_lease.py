"""A worker whose lease another worker took while it froze (a long pause, its simulated
changes waiting to be committed): nothing it writes after the takeover is made, kept or
journaled (its changes, the record of what its hosts ran, its outcome), and it stops as
it does when it finds its lease lost, reporting nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.contract import (
    ComponentDeployed,
    ComponentStarted,
    DeployComponent,
    Envelope,
    envelope,
)
from orchestrator.store import Effect, Finished, Held, Pending, Routed, Store, Word
from tests.support.runner import StoreAsSeen, runner_on, web_deploy
from workers.components import started_key
from workers.tasks import ComponentRunner, WorkerLimits, work_key

_LEASE = "component/r1/web"


def _take_over(store: Store, lease: str, owner: str) -> None:
    """worker-b takes ``lease`` over from ``owner``, as once it has lapsed."""
    store.release_lease(lease, owner)
    assert store.acquire_lease(lease, "worker-b/1", 60)


class TakenOverAtWeb2(StoreAsSeen):
    """The worker's store, where another worker takes the component's lease just before
    web-2 is drained (as if this worker froze there for longer than the lease lasts)."""

    def set_drained(
        self, environment: str, service: str, host: str, drained: bool, effect: Effect | None
    ) -> Pending[bool]:
        if host == "web-2" and drained and effect is not None and effect.under is not None:
            _take_over(self._store, effect.under.lease, effect.under.owner)
        return self._store.set_drained(environment, service, host, drained, effect)


def test_no_change_of_a_worker_whose_lease_was_taken_over_is_made(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, _, command):
        store = parts.store
        runner = runner_on(parts, TakenOverAtWeb2(store))

        runner.deploy(command.to_wire())  # returns: the worker that took over finishes it

        work = work_key(command)
        assert store.lease_holder(_LEASE) == "worker-b/1"
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
        taken_over = runner_on(parts, TakenOverAtWeb2(store))
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


class TakenOverAtTheStart(StoreAsSeen):
    """The worker's store, where worker-b takes the lease just before the worker keeps
    what its hosts ran (its first write after the claim)."""

    def record_reports(self, word: Word, under: Held | None = None) -> Envelope | None:
        if word.keep is not None and under is not None:
            _take_over(self._store, under.lease, under.owner)
        return self._store.record_reports(word, under)

    def record_reports_ahead(self, word: Word, under: Held | None = None) -> Pending[None]:
        if word.keep is not None and under is not None:
            _take_over(self._store, under.lease, under.owner)
        return self._store.record_reports_ahead(word, under)


def test_a_worker_taken_over_before_its_first_step_keeps_nothing_of_its_hosts(
    tmp_path: Path, store_url: str, namespace: str
) -> None:
    with web_deploy(tmp_path, namespace, store_url=store_url) as (parts, runner, command):
        store = parts.store
        frozen = runner_on(parts, TakenOverAtTheStart(store))
        frozen.deploy(command.to_wire())

        started = started_key("r1", "web", 1)
        assert store.outcome(started) is None  # the next holder keeps what it finds
        assert store.outcome(work_key(command)) is None
        assert store.effects("r1") == {}
        assert store.progress(work_key(command)) == {}

        # worker-b dies; the command, delivered again, is carried out by a worker whose
        # record of the hosts is its own.
        store.release_lease(_LEASE, "worker-b/1")
        runner.deploy(command.to_wire())
        outcome = store.outcome(work_key(command))
        assert outcome is not None and isinstance(outcome.payload, ComponentDeployed)
        kept = store.outcome(started)
        assert kept is not None and isinstance(kept.payload, ComponentStarted)
        assert kept.payload.previous_versions == dict.fromkeys(["web-1", "web-2", "web-3"], "1.0.0")


class TakenOverAtTheEnd(StoreAsSeen):
    """The worker's store, where worker-b takes the lease just before the worker records
    its outcome."""

    def finish_work(
        self,
        work: str,
        outcome: Envelope,
        lease: str,
        owner: str,
        last: Word | None = None,
        *,
        routed: Routed | None = None,
    ) -> Finished:
        _take_over(self._store, lease, owner)
        return self._store.finish_work(work, outcome, lease, owner, last, routed=routed)


def test_a_worker_taken_over_as_it_ends_leaves_the_outcome_to_the_one_that_took_over(
    tmp_path: Path, store_url: str, namespace: str
) -> None:
    with web_deploy(tmp_path, namespace, store_url=store_url) as (parts, _, command):
        store = parts.store
        frozen = runner_on(parts, TakenOverAtTheEnd(store))
        frozen.deploy(command.to_wire())  # returns: worker-b ends it

        assert store.outcome(work_key(command)) is None
        assert store.lease_holder(_LEASE) == "worker-b/1"
