"""What must hold after any fault: checked against the store and the simulator's truth.

* the release reached a terminal state within a bound;
* every host runs exactly the new version (succeeded) or exactly its previous one
  (rolled back);
* no effect on a host for the same (release, step) happened twice;
* no step succeeded twice: a step that succeeded is in the journal, so a worker taking
  over never does it (nor reports it) again;
* no outbox entry was left unpublished;
* compensations ran in reverse dependency order, each once (a command may be sent again
  when nobody answered it in time; the rollback itself happens once);
* no transition left a terminal state: one terminal event, and nothing decided after it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.client import fleet_versions
from orchestrator.contract import Envelope, StepSucceeded
from orchestrator.fleet import Fleet
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import Store
from orchestrator.vocabulary import Step

TERMINAL_EVENTS = {"ReleaseSucceeded", "ReleaseRolledBack", "ReleaseFailed", "ReleaseRejected"}
DECIDED = {"DeployComponent", "RollbackComponent", *TERMINAL_EVENTS}

Versions = Mapping[str, Mapping[str, str]]  # service -> host -> version


@dataclass(frozen=True)
class Ended:
    state: ReleaseState
    timeline: list[Envelope]


def wait_until_ended(store: Store, release_id: str, timeout_s: float = 120) -> Ended:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = store.load(release_id)
        if stored is not None and stored.state.status.is_terminal:
            return Ended(stored.state, store.timeline(release_id))
        time.sleep(0.1)
    stored = store.load(release_id)
    raise AssertionError(
        f"release {release_id} did not end in {timeout_s} s: "
        f"{stored.state.status if stored else 'never stored'}"
    )


def versions_now(fleet: Fleet, store: Store, environment: str = "staging") -> Versions:
    return fleet_versions(fleet, store)[environment]


def check_invariants(
    store: Store, fleet: Fleet, ended: Ended, before: Versions, expected: ReleaseStatus
) -> None:
    state = ended.state
    assert state.status is expected, f"{state.status}: {state.failure}"
    _check_hosts(fleet, store, state, before)
    _check_effects_once(store, state.id)
    _check_steps_succeeded_once(ended.timeline)
    _check_outbox_empty(store)
    _check_compensation_order(state, ended.timeline)
    _check_one_ending(ended.timeline)


def _check_hosts(fleet: Fleet, store: Store, state: ReleaseState, before: Versions) -> None:
    after = versions_now(fleet, store, state.environment)
    for service, component in state.components.items():
        if component.flag is not None:
            continue  # a flag flip moves no host
        if state.status is ReleaseStatus.SUCCEEDED:
            assert set(after[service].values()) == {component.version}, (service, after[service])
        elif state.status is ReleaseStatus.ROLLED_BACK:
            assert after[service] == before[service], (service, before[service], after[service])


def _check_effects_once(store: Store, release_id: str) -> None:
    repeated = {key: n for key, n in store.effects(release_id).items() if n != 1}
    assert not repeated, f"effects done more than once: {repeated}"


def _check_outbox_empty(store: Store, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while store.pending_outbox() and time.monotonic() < deadline:
        time.sleep(0.1)  # the relay runs about once a second
    assert not store.pending_outbox(), "committed messages were never published"


def _check_compensation_order(state: ReleaseState, timeline: list[Envelope]) -> None:
    # A RollbackComponent may be sent again when nobody answered it in time; what must
    # happen once is the rollback itself (its effects are counted apart).
    undone = [m for m in timeline if m.type == "ComponentRolledBack"]
    services = [getattr(m.payload, "service", "") for m in undone]
    assert len(services) == len(set(services)), f"a component was rolled back twice: {services}"
    position: dict[tuple[str, Any], int] = {}
    for index, message in enumerate(timeline):  # the first of each (type, service)
        position.setdefault((message.type, getattr(message.payload, "service", None)), index)
    for component in state.components.values():
        finished = position.get(("ComponentRolledBack", component.service))
        if finished is None:
            continue
        for dependency in component.depends_on:
            started = position.get(("RollbackComponent", dependency))
            if started is not None:
                assert finished < started, f"{dependency} undone before its dependent"


def _check_steps_succeeded_once(timeline: list[Envelope]) -> None:
    # Flag flips are left out: several flags of one service report the same step and
    # batch (their effects are counted per flag instead).
    succeeded = [
        (p.service, p.step, p.batch, p.rollback)
        for p in (m.payload for m in timeline)
        if isinstance(p, StepSucceeded) and p.step is not Step.TOGGLE
    ]
    repeated = {step for step, n in Counter(succeeded).items() if n > 1}
    assert not repeated, f"steps succeeded more than once: {repeated}"


def _check_one_ending(timeline: list[Envelope]) -> None:
    endings = [i for i, m in enumerate(timeline) if m.type in TERMINAL_EVENTS]
    assert len(endings) == 1, [timeline[i].type for i in endings]
    decided_after = [m.type for m in timeline[endings[0] + 1 :] if m.type in DECIDED]
    assert not decided_after, f"decided after the end: {decided_after}"
