"""A worker's runner in the test's own process (in-memory broker, SQLite store, the e2e
fleet), and the command these tests give it: ``web`` to 2.0.0 in staging, release r1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.contract import DeployComponent, Envelope, envelope
from orchestrator.runtime import Parts
from orchestrator.store import Store
from tests.support.listening import connected_parts
from workers.tasks import ComponentRunner, WorkerLimits

FLEET = Path(__file__).parents[1] / "e2e" / "fleet.yaml"


@contextmanager
def web_deploy(
    tmp_path: Path, namespace: str | None = None, **settings: Any
) -> Iterator[tuple[Parts, ComponentRunner, Envelope]]:
    """The runner, its parts (``settings`` as ``connected_parts`` takes them: another
    store, say) and the command."""
    namespace = namespace or f"t{uuid.uuid4().hex[:8]}"
    with connected_parts("memory://", namespace, tmp_path, FLEET, **settings) as parts:
        runner = ComponentRunner(parts.fleet, parts.store, parts.bus, WorkerLimits())
        command = envelope(
            DeployComponent(environment="staging", service="web", version="2.0.0"),
            release_id="r1",
            actor="test",
        )
        yield parts, runner, command


class StoreAsSeen:
    """A store as it is, but for what a subclass changes: the moment a test has something
    happen to it (another worker taking a lease over, a listener binding), as the worker
    using it meets it."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def runner_on(parts: Parts, store: StoreAsSeen) -> ComponentRunner:
    """A runner of the test's parts, on a view of their store."""
    return ComponentRunner(parts.fleet, store, parts.bus, WorkerLimits())  # type: ignore[arg-type]
