"""The Python client: submit a release, follow it, and read what Drover knows.

The JSON shapes returned here are the ones scripts rely on (``release show --json``,
``fleet --json``, ``queues --json``): fields may be added, never renamed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from orchestrator.bus import Bus
from orchestrator.contract import (
    Envelope,
    Message,
    SubmitRelease,
    derived_id,
    envelope,
)
from orchestrator.fleet import Fleet
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import Store

__all__ = [
    "Client",
    "fleet_versions",
    "new_release_id",
    "release_view",
    "show",
    "waiting_for",
]


def new_release_id() -> str:
    return f"R-{uuid.uuid4().hex[:10]}"


class Client:
    """Submits releases to a coordinator over the bus and follows them in the store."""

    def __init__(self, store: Store, bus: Bus):
        self._store = store
        self._bus = bus

    def submit(self, request: SubmitRelease, actor: str, release_id: str | None = None) -> str:
        """Publish the submission; a given ``release_id`` also fixes the message's id, so
        that sending it again is a duplicate the coordinator recognises."""
        message_id = derived_id(release_id, "submit") if release_id else None
        release_id = release_id or new_release_id()
        self._bus.publish(
            envelope(request, release_id=release_id, actor=actor, message_id=message_id)
        )
        return release_id

    def follow(self, release_id: str, timeout_s: float, poll_s: float = 0.1) -> Iterator[Envelope]:
        """Yield the release's timeline as it grows, until it ends or time runs out."""
        seen = 0
        for _ in self._looks(release_id, timeout_s, poll_s):
            new = self._store.timeline(release_id, start=seen)
            yield from new
            seen += len(new)

    def wait(self, release_id: str, timeout_s: float, poll_s: float = 0.1) -> None:
        """Return once the release has ended; raise TimeoutError if it has not in time."""
        for _ in self._looks(release_id, timeout_s, poll_s):
            pass

    def _looks(self, release_id: str, timeout_s: float, poll_s: float) -> Iterator[None]:
        """One look every ``poll_s``, the last once the release has ended (what its
        timeline has by then is final); TimeoutError when ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # The release's own fields are all a look needs: loading its components as
            # well cost a process running a wide release a third of its interpreter.
            stored = self._store.load(release_id, components=())
            yield
            if stored is not None and stored.state.status.is_terminal:
                return
            time.sleep(poll_s)
        raise TimeoutError(f"release {release_id} did not finish within {timeout_s:.0f} s")

    def decide(
        self, release_id: str, payload: Message, actor: str, timeout_s: float = 15
    ) -> list[Envelope]:
        """Send a person's command about a release, and what the coordinator made of it.

        Returns the messages the command caused (an ``ApprovalRefused`` if it was not
        taken) once the coordinator has handled it; raises TimeoutError if it has not
        within ``timeout_s`` (the command stays on the bus and is handled later).
        """
        sent = envelope(payload, release_id=release_id, actor=actor)
        self._bus.publish(sent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            timeline = self._store.timeline(release_id)
            if any(m.id == sent.id for m in timeline):
                return [m for m in timeline if m.causation_id == sent.id]
            time.sleep(0.1)
        raise TimeoutError(f"the coordinator has not handled it within {timeout_s:.0f} s")

    def state(self, release_id: str) -> ReleaseState | None:
        stored = self._store.load(release_id)
        return stored.state if stored else None

    def show(self, release_id: str) -> dict[str, Any] | None:
        return show(self._store, release_id)


def show(store: Store, release_id: str) -> dict[str, Any] | None:
    """``release show --json``: the release, its components and its timeline."""
    stored = store.load(release_id)
    if stored is None:
        return None
    view = release_view(stored.state, store.timeline(release_id))
    view["waiting_for"] = waiting_for(store, stored.state)
    return view


def waiting_for(store: Store, state: ReleaseState) -> list[str]:
    """The releases ahead of a queued one, for the services it needs; empty once it runs."""
    if state.status is not ReleaseStatus.QUEUED:
        return []
    ahead: list[str] = []
    for key in store.locks_of(state.id):
        queue = store.lock_queue(key)
        for release_id in queue[: queue.index(state.id)] if state.id in queue else []:
            if release_id not in ahead:
                ahead.append(release_id)
    return ahead


def fleet_versions(fleet: Fleet, store: Store) -> dict[str, dict[str, dict[str, str]]]:
    """``{environment: {service: {host: version}}}``, as each service's driver reports them.

    A host that cannot be asked shows ``? (why)``: one unreachable host must not hide
    the rest of the fleet.
    """
    from workers.drivers import StepError  # the client asks hosts the way workers do
    from workers.drivers.factory import driver_for

    view: dict[str, dict[str, dict[str, str]]] = {}
    for env_name, environment in fleet.environments.items():
        view[env_name] = {}
        for name, service in environment.services.items():
            driver = driver_for(
                service.driver,
                store,
                environment=env_name,
                service=name,
                release_id="-",
                rollback=False,
            )
            versions: dict[str, str] = {}
            for host in service.hosts:
                try:
                    versions[host] = driver.current_version(host)
                except StepError as error:
                    versions[host] = f"? ({error.reason})"
            view[env_name][name] = versions
    return view


def release_view(state: ReleaseState, timeline: list[Envelope] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": state.id,
        "environment": state.environment,
        "state": state.status.value,
        "reason": state.reason,
        "requested_by": state.requested_by,
        "failure": state.failure,
        "created_at": state.created_at.isoformat(),
        "finished_at": state.finished_at.isoformat() if state.finished_at else None,
        "attempt": state.attempt,
        "approved_by": state.approved_by,
        "paused_by": state.paused_by,
        "aborted_by": state.aborted_by,
        "waiting_for_approval": state.waiting_for_approval,
        "components": [
            {
                "component": c.name,
                "service": c.service,
                "version": c.version,
                "flag": c.flag,
                "enabled": c.enabled if c.flag else None,
                "strategy": c.strategy.kind if c.strategy else None,
                "previous_version": c.previous_version,
                "state": c.status.value,
                "depends_on": list(c.depends_on),
            }
            for c in state.components.values()
        ],
    }
    if timeline is not None:
        view["timeline"] = [_timeline_entry(message) for message in timeline]
    return view


def _timeline_entry(message: Envelope) -> dict[str, Any]:
    return {
        "at": message.occurred_at.isoformat(),
        "type": message.type,
        "actor": message.actor,
        "id": message.id,
        **message.payload.model_dump(mode="json"),
    }
