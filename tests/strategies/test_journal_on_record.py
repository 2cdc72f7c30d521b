"""What a worker taking over a component finds in the journal: every step done before
the effect that was under way.

A worker records a host's journal entry with its next reports rather than on its own, so
this drives one step over several hosts through the worker's own progress and journal,
and looks into the store (the file a successor would read) at each host's effect: before
it, and (for the simulator's, whose effects are writes to the store made in order with
the entries, without waiting for either) once it is made. A read commits what was
written ahead, as any commit does: a host's entry is never on record before its change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.drills import CrashPoints
from orchestrator.fleet.drivers import SimulatedDriverConfig
from orchestrator.store import Store
from orchestrator.vocabulary import Step
from tests.support.runner import web_deploy
from workers.drivers.simulated import SimulatedDriver
from workers.leases import Lease, LeaseKeeper
from workers.progress import ComponentProgress, StoreJournal
from workers.steps import Run, run_step

HOSTS = ["web-1", "web-2", "web-3"]
WORK = "r1/web/deploy/1"


class Watched(SimulatedDriver):
    """The simulator, noting what the journal on record holds as each host is drained
    (just before the drain, and once it is done), and the step last started on record
    as each host is verified."""

    def __init__(self, config: SimulatedDriverConfig, store: Store) -> None:
        super().__init__(
            config, store, environment="staging", service="web", release_id="r1", rollback=False
        )
        self.store = store
        self.before: list[tuple[str, dict[str, list[str]]]] = []
        self.after: list[tuple[str, dict[str, list[str]]]] = []
        self.verifying: list[tuple[str, str]] = []

    def drain(self, host: str) -> str:
        self.before.append((host, self.store.progress(WORK)))
        output = super().drain(host)
        self.after.append((host, self.store.progress(WORK)))
        return output

    def verify(self, host: str, version: str) -> str:
        started = [m.payload for m in self.store.timeline("r1") if m.type == "StepStarted"]
        self.verifying.append((host, getattr(started[-1], "step", "") if started else ""))
        return super().verify(host, version)


FLEETS = pytest.mark.parametrize("effects_in_store", [False, True], ids=["real fleet", "simulator"])


@FLEETS
def test_each_host_is_on_record_before_the_next_hosts_effect(
    tmp_path: Path, effects_in_store: bool
) -> None:
    with _stepped(tmp_path, Step.DRAIN, effects_in_store=effects_in_store) as (
        driver,
        store,
        progress,
    ):
        each_before_the_next = [
            ("web-1", {}),
            ("web-2", {"web-1": ["drain"]}),
            ("web-3", {"web-1": ["drain"], "web-2": ["drain"]}),
        ]
        assert driver.before == each_before_the_next
        if effects_in_store:
            assert driver.after == each_before_the_next
        progress.flush()  # the worker's next word (a step's start, or its outcome)
        assert store.progress(WORK) == {host: ["drain"] for host in HOSTS}


@FLEETS
def test_a_step_that_checks_first_is_on_the_timeline_while_it_checks(
    tmp_path: Path, effects_in_store: bool
) -> None:
    with _stepped(tmp_path, Step.VERIFY, effects_in_store=effects_in_store) as (driver, _, _):
        assert driver.verifying == [(host, "verify") for host in HOSTS]


@contextmanager
def _stepped(
    tmp_path: Path, step: Step, *, effects_in_store: bool
) -> Iterator[tuple[Watched, Store, ComponentProgress]]:
    """One step over ``HOSTS`` through the worker's own progress and journal."""
    with web_deploy(tmp_path) as (parts, runner, command):
        keeper = LeaseKeeper(parts.store)
        assert parts.store.acquire_lease("component/r1/web", "test", 60)  # as claimed
        lease = Lease(keeper, "component/r1/web", "test", 60, work=WORK, attempts=1)
        progress = ComponentProgress(runner, command, lease, effects_in_store=effects_in_store)
        journal = StoreJournal(parts.store, WORK, progress, lease.check, CrashPoints(), empty=True)
        config = parts.fleet.service("staging", "web").driver
        assert isinstance(config, SimulatedDriverConfig)
        driver = Watched(config, parts.store)

        run_step(
            driver,
            step,
            1,
            HOSTS,
            versions=dict.fromkeys(HOSTS, "2.0.0"),
            run=Run(
                report=progress,
                journal=journal,
                undo_journal=journal,
                should_stop=lambda: None,
                hold=lambda hold, reason: None,
                verify_host=lambda host, version: "",
                judge=lambda *_: [],
                drain_timeout_s=0,
            ),
        )
        yield driver, parts.store, progress
