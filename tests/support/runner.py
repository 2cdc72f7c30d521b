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
