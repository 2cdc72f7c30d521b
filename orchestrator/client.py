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
    AbortRelease,
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    DeployComponent,
    Envelope,
    Message,
    ReleaseAccepted,
    ReleaseFailed,
    ReleaseQueued,
    ReleaseRejected,
    ReleaseRolledBack,
    RollbackComponent,
    StepFailed,
    StepStarted,
    StepSucceeded,
    SubmitRelease,
    envelope,
)
from orchestrator.fleet import Fleet
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import Store

__all__ = [
    "Client",
    "describe",
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
        release_id = release_id or new_release_id()
        self._bus.publish(envelope(request, release_id=release_id, actor=actor))
        return release_id

    def follow(self, release_id: str, timeout_s: float, poll_s: float = 0.1) -> Iterator[Envelope]:
        """Yield the release's timeline as it grows, until it ends or time runs out."""
        seen = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(release_id)
            timeline = self._store.timeline(release_id)
            yield from timeline[seen:]
            seen = len(timeline)
            if state is not None and state.status.is_terminal:
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
        "components": [
            {
                "service": c.service,
                "version": c.version,
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


def describe(message: Envelope) -> str:
    """One line for a person reading a release's progress."""
    at = message.occurred_at.strftime("%H:%M:%S.%f")[:-3]
    return f"{at}  {message.type:<24} {_details(message)}".rstrip()


def _details(message: Envelope) -> str:
    if hasattr(message.payload, "service"):
        return _component_details(message.payload)
    p = message.payload
    match p:
        case SubmitRelease():
            return f"{p.environment}: " + ", ".join(
                f"{c.service}@{c.version}" for c in p.components
            )
        case ReleaseAccepted():
            return f"{p.environment}, {len(p.components)} components, by {message.actor}"
        case ReleaseRejected():
            return "; ".join(str(problem) for problem in p.problems)
        case ReleaseQueued():
            return f"waiting for {', '.join(p.behind)}"
        case AbortRelease():
            return f"by {message.actor}" + (f": {p.reason}" if p.reason else "")
        case ReleaseRolledBack():
            return f"because {p.reason}"
        case ReleaseFailed():
            return f"{p.reason}; needs attention: {'; '.join(p.needs_attention)}"
    return ""


def _component_details(p: Message) -> str:
    match p:
        case DeployComponent():
            return f"{p.service} -> {p.version}"
        case RollbackComponent():
            targets = sorted(set(p.to_versions.values()))
            return f"{p.service} {p.from_version} -> {', '.join(targets) or 'nothing recorded'}"
        case ComponentStarted():
            previous = ", ".join(sorted(set(p.previous_versions.values())))
            return f"{p.service} {previous} -> {p.version}"
        case StepStarted() | StepSucceeded() | StepFailed():
            return _step_details(p)
        case ComponentFailed():
            restored = "hosts put back" if p.restored else "HOSTS NOT PUT BACK"
            return f"{p.service}@{p.version}: {p.reason} ({restored})"
        case ComponentRollbackFailed():
            return f"{p.service}: {p.reason}; hosts left: {', '.join(p.hosts)}"
        case DeadlinePassed():
            return f"{p.service}: no word by {p.deadline:%H:%M:%S} ({p.waited_for})"
        case ComponentWaiting():
            return f"{p.service}: waiting for {p.holder} to finish"
    service = getattr(p, "service", "")
    version = getattr(p, "version", "")
    return f"{service}@{version}" if version else service


def _step_details(p: StepStarted | StepSucceeded | StepFailed) -> str:
    phase = "rollback " if p.rollback else ""
    text = f"{p.service} {phase}{p.step} batch {p.batch} [{', '.join(p.hosts)}]"
    if isinstance(p, StepSucceeded):
        return f"{text} {p.duration_ms:.0f} ms"
    if isinstance(p, StepFailed):
        return f"{text} FAILED on {p.host}: {p.reason}"
    return text
