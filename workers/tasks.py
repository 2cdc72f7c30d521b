"""The worker's entry points: ``DeployComponent`` and ``RollbackComponent`` as Celery tasks.

A task reads its command, finds the service in the fleet file, runs the strategy with the
service's driver, and reports every step and the outcome as events. It never raises:
whatever happens, the coordinator hears an outcome, because an exception escaping a
late-acked task would only leave the saga waiting.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import Celery

from orchestrator.bus import DEPLOY_TASK, ROLLBACK_TASK, Bus
from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    DeployComponent,
    Envelope,
    Event,
    MessageDecodeError,
    RollbackComponent,
    Step,
    StepFailed,
    StepStarted,
    StepSucceeded,
    decode,
    envelope,
)
from orchestrator.observability import get_logger, message_context
from orchestrator.plans import Fleet, ServiceConfig
from orchestrator.store import DeadLetter, Store
from workers.drivers import Driver, StepError
from workers.drivers.simulated import SimulatedDriver
from workers.strategies import roll_back, roll_out

__all__ = ["ComponentRunner", "register_tasks"]

log = get_logger(__name__)

_C = TypeVar("_C", DeployComponent, RollbackComponent)


class ComponentRunner:
    """Carries out components for the services of one fleet file."""

    def __init__(self, fleet: Fleet, store: Store, bus: Bus):
        self._fleet = fleet
        self._store = store
        self._bus = bus
        self.actor = f"drover-worker@{socket.gethostname()}"

    def deploy(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, DeployComponent, self._deploy)

    def rollback(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, RollbackComponent, self._rollback)

    def _carry_out(
        self,
        wire: dict[str, Any],
        kind: type[_C],
        body: Callable[[Envelope, _C, _BusReporter], None],
    ) -> None:
        command = self._accept(wire)
        if command is None:
            return
        payload = command.payload
        if not isinstance(payload, kind):
            self._dead_letter(command.encode(), f"{command.type} sent to the {kind.__name__} task")
            return
        with message_context(
            release_id=command.release_id, service=payload.service, message_id=command.id
        ):
            report = _BusReporter(self, command, payload.environment, payload.service)
            try:
                body(command, payload, report)
            except Exception as exc:  # report the failure rather than leave the saga waiting
                log.exception("component crashed")
                report.outcome(_crashed(payload, f"worker error: {exc!r}"))

    def _deploy(self, command: Envelope, payload: DeployComponent, report: _BusReporter) -> None:
        service = self._fleet.service(payload.environment, payload.service)
        driver = self._driver(service, command, payload.environment, payload.service, False)
        previous = {host: driver.current_version(host) for host in service.hosts}
        report.outcome(
            ComponentStarted(
                environment=payload.environment,
                service=payload.service,
                version=payload.version,
                previous_versions=previous,
            )
        )
        undo = self._driver(service, command, payload.environment, payload.service, True)
        result = roll_out(driver, service.batches(), payload.version, report, undo=undo)
        if result.error is None:
            outcome: Event = ComponentDeployed(
                environment=payload.environment,
                service=payload.service,
                version=payload.version,
                previous_versions=result.previous_versions,
            )
        else:
            outcome = ComponentFailed(
                environment=payload.environment,
                service=payload.service,
                version=payload.version,
                reason=str(result.error),
                restored=result.restored,
            )
        report.outcome(outcome)

    def _rollback(
        self, command: Envelope, payload: RollbackComponent, report: _BusReporter
    ) -> None:
        service = self._fleet.service(payload.environment, payload.service)
        driver = self._driver(service, command, payload.environment, payload.service, True)
        result = roll_back(driver, service.batches(), payload.to_versions, report)
        if result.error is None:
            outcome: Event = ComponentRolledBack(
                environment=payload.environment,
                service=payload.service,
                to_versions=payload.to_versions,
            )
        else:
            outcome = ComponentRollbackFailed(
                environment=payload.environment,
                service=payload.service,
                reason=str(result.error),
                hosts=result.hosts_left,
            )
        report.outcome(outcome)

    def _driver(
        self,
        service: ServiceConfig,
        command: Envelope,
        environment: str,
        name: str,
        rollback: bool,
    ) -> Driver:
        return SimulatedDriver(
            service.driver,
            self._store,
            environment=environment,
            service=name,
            release_id=command.release_id,
            rollback=rollback,
        )

    def _accept(self, wire: dict[str, Any]) -> Envelope | None:
        """The command, if it can be carried out here; otherwise it is dead-lettered."""
        try:
            command = decode(wire)
        except MessageDecodeError as error:
            self._dead_letter(error.raw, str(error))
            return None
        payload = command.payload
        if not isinstance(payload, DeployComponent | RollbackComponent):
            self._dead_letter(command.encode(), f"{command.type} is not a worker's command")
            return None
        services = self._fleet.environments.get(payload.environment)
        if services is None or payload.service not in services.services:
            # The coordinator's fleet file and this worker's disagree: keep the command
            # where on-call will see it rather than guess.
            self._dead_letter(command.encode(), "service not in this worker's fleet file")
            return None
        return command

    def _dead_letter(self, raw: bytes, reason: str) -> None:
        log.error("command dead-lettered", reason=reason)
        self._store.add_dead_letter(
            DeadLetter(
                id=uuid.uuid4().hex, at=datetime.now(UTC), reason=reason, raw=raw, source="worker"
            )
        )

    def publish(self, event: Event, command: Envelope) -> None:
        self._bus.publish(
            envelope(event, release_id=command.release_id, actor=self.actor, causation=command)
        )


class _BusReporter:
    """Turns a strategy's progress into events on the bus."""

    def __init__(self, runner: ComponentRunner, command: Envelope, environment: str, service: str):
        self._runner = runner
        self._command = command
        self._environment = environment
        self._service = service

    def outcome(self, event: Event) -> None:
        self._runner.publish(event, self._command)

    def step_started(self, step: Step, batch: int, hosts: Sequence[str], rollback: bool) -> None:
        with message_context(step=step, batch=batch):
            log.info("step started", hosts=list(hosts), rollback=rollback)
        self.outcome(StepStarted(**self._where(step, batch, hosts, rollback)))

    def step_succeeded(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool, duration_ms: float
    ) -> None:
        self.outcome(
            StepSucceeded(**self._where(step, batch, hosts, rollback), duration_ms=duration_ms)
        )

    def step_failed(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool, error: StepError
    ) -> None:
        with message_context(step=step, batch=batch):
            log.warning("step failed", host=error.host, reason=error.reason, rollback=rollback)
        self.outcome(
            StepFailed(
                **self._where(step, batch, hosts, rollback), host=error.host, reason=error.reason
            )
        )

    def _where(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool
    ) -> dict[str, Any]:
        return {
            "environment": self._environment,
            "service": self._service,
            "step": step,
            "batch": batch,
            "hosts": tuple(hosts),
            "rollback": rollback,
        }


def _crashed(payload: DeployComponent | RollbackComponent, reason: str) -> Event:
    if isinstance(payload, DeployComponent):
        return ComponentFailed(
            environment=payload.environment,
            service=payload.service,
            version=payload.version,
            reason=reason,
            restored=False,
        )
    return ComponentRollbackFailed(
        environment=payload.environment,
        service=payload.service,
        reason=reason,
        hosts=tuple(payload.to_versions),
    )


def register_tasks(app: Celery, runner: ComponentRunner) -> None:
    """Bind the runner to the task names the coordinator sends."""
    app.task(name=DEPLOY_TASK, acks_late=True)(runner.deploy)
    app.task(name=ROLLBACK_TASK, acks_late=True)(runner.rollback)
