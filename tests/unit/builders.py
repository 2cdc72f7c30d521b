"""Small builders for unit tests: a fleet, a release request and an envelope, in one line each."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.contract import ComponentRequest, Envelope, Message, SubmitRelease, envelope
from orchestrator.plans import Fleet

ENVIRONMENT = "prod"
RELEASE_ID = "R-1"
ACTOR = "ci"
HOSTS = ("h1", "h2")
OLD_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def service_config(hosts: Sequence[str] = HOSTS, **changes: Any) -> dict[str, Any]:
    """A service of the fleet file, as the YAML would read, with ``changes`` on top."""
    return {
        "hosts": list(hosts),
        "driver": {"kind": "simulated", "initial_version": OLD_VERSION},
        **changes,
    }


def fleet_data(*services: str, environment: str = ENVIRONMENT) -> dict[str, Any]:
    """A fleet file's content with one environment holding ``services``."""
    return {
        "environments": {environment: {"services": {name: service_config() for name in services}}}
    }


def fleet(*services: str, environment: str = ENVIRONMENT) -> Fleet:
    return Fleet.model_validate(fleet_data(*services, environment=environment))


def component(service: str, *depends_on: str, version: str = NEW_VERSION) -> ComponentRequest:
    return ComponentRequest(service=service, version=version, depends_on=depends_on)


def submit(
    *components: ComponentRequest, environment: str = ENVIRONMENT, reason: str = "test"
) -> SubmitRelease:
    return SubmitRelease(environment=environment, reason=reason, components=components)


def event(
    payload: Message,
    *,
    release_id: str = RELEASE_ID,
    at: datetime = T0,
    message_id: str | None = None,
) -> Envelope:
    """Wrap a payload as it would arrive off the bus: fixed clock, deterministic id."""
    text = f"{at.isoformat()} {payload.model_dump_json()}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    identity = message_id or f"{type(payload).__name__}-{digest}"
    return envelope(
        payload, release_id=release_id, actor=ACTOR, message_id=identity, occurred_at=at
    )


def later(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)
