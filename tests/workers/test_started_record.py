"""What a deploy's hosts ran before it touched them: recorded once, in the same write as
its first step's start and before any effect, for a rollback or a worker taking over to
go by; a worker whose lease lapsed before that write finds another's record there, and
stops without touching a host."""

from __future__ import annotations

from pathlib import Path

from orchestrator.contract import ComponentStarted, Envelope, envelope
from orchestrator.store import Store
from tests.support.runner import StoreAsSeen, runner_on, web_deploy
from workers.components import started_key
from workers.tasks import work_key

HOSTS = ["web-1", "web-2", "web-3"]  # the fleet's web, all on 1.0.0 until deployed


class _Overtaken(StoreAsSeen):
    """The store as a worker sees it whose lease lapsed while it read its hosts: another
    worker, holding the lease since, records what the hosts ran first."""

    def __init__(self, store: Store, key: str, theirs: Envelope):
        super().__init__(store)
        self._key, self._theirs = key, theirs

    def host_versions(self, environment: str, service: str) -> dict[str, str]:
        self._store.record_outcome(self._key, self._theirs)
        return self._store.host_versions(environment, service)


def test_a_deploy_records_what_its_hosts_ran_with_its_first_step(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, runner, command):
        runner.deploy(command.to_wire())

        recorded = parts.store.outcome(started_key("r1", "web", 1))
        timeline = parts.store.timeline("r1")

    assert recorded is not None and isinstance(recorded.payload, ComponentStarted)
    assert recorded.payload.previous_versions == dict.fromkeys(HOSTS, "1.0.0")
    assert [m.type for m in timeline[:2]] == ["ComponentStarted", "StepStarted"]
    assert timeline[0] == recorded


def test_a_worker_overtaken_before_its_first_step_touches_no_host(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, _, command):
        key = started_key("r1", "web", 1)
        found = ComponentStarted(
            environment="staging",
            service="web",
            version="2.0.0",
            previous_versions=dict.fromkeys(HOSTS, "1.0.0"),
        )
        theirs = envelope(found, release_id="r1", actor="drover-worker-other")
        runner = runner_on(parts, _Overtaken(parts.store, key, theirs))

        runner.deploy(command.to_wire())

        assert parts.store.outcome(key) == theirs  # kept, not overwritten
        assert parts.store.outcome(work_key(command)) is None  # no outcome of this worker's
        assert parts.store.timeline("r1") == []  # nor any report
        assert parts.store.host_versions("staging", "web") == {}  # nor any effect
