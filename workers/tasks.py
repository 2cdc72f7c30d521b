"""The worker's entry points: ``DeployComponent`` and ``RollbackComponent`` as Celery tasks.

A task reads its command, finds the service in the fleet file, runs the strategy with the
service's driver, and reports every step and the outcome as events. Whatever goes wrong
in the work itself becomes an outcome the coordinator hears. Only an unreachable store or
broker escapes, after the task has tried again for a while (carrying out a command twice
is harmless: see ``_once``); then the component's deadline brings the saga on.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import Celery

from orchestrator.bus import DEPLOY_TASK, ROLLBACK_TASK, BrokerUnavailable, Bus
from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    ComponentWaiting,
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
    derived_id,
    envelope,
)
from orchestrator.drills import CrashPoints
from orchestrator.observability import get_logger, message_context
from orchestrator.plans import Fleet, ServiceConfig
from orchestrator.saga import ComponentStatus
from orchestrator.store import DeadLetter, Store, StoreUnavailable
from workers.drivers import Driver, StepError
from workers.drivers.simulated import SimulatedDriver
from workers.leases import Lease, LeaseLost, held
from workers.strategies import Run, roll_back, roll_out

__all__ = ["ComponentRunner", "WorkerLimits", "register_tasks"]

log = get_logger(__name__)

_C = TypeVar("_C", DeployComponent, RollbackComponent)
_INFRASTRUCTURE_TRIES = 5  # with 1, 2, 4, 8 s between them


@dataclass(frozen=True)
class WorkerLimits:
    lease_ttl_s: float = 15.0  # how soon a dead worker's component is taken over
    delivery_limit: int = 5  # attempts at one command before it is dead-lettered


class ComponentRunner:
    """Carries out components for the services of one fleet file."""

    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        bus: Bus,
        limits: WorkerLimits,
        crash_points: CrashPoints | None = None,
    ):
        self._fleet = fleet
        self._store = store
        self._bus = bus
        self._limits = limits
        self.crash = crash_points or CrashPoints()
        # The pid tells apart workers on one machine, in leases and in logs.
        self.actor = f"drover-worker-{os.getpid()}@{socket.gethostname()}"

    def deploy(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, DeployComponent, self._deploy)

    def rollback(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, RollbackComponent, self._rollback)

    def _carry_out(
        self,
        wire: dict[str, Any],
        kind: type[_C],
        body: Callable[[Envelope, _C, _Context], Event],
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
            for attempt in range(_INFRASTRUCTURE_TRIES):
                try:
                    self._once(command, payload, body)
                    return
                except (StoreUnavailable, BrokerUnavailable) as exc:
                    if attempt == _INFRASTRUCTURE_TRIES - 1:
                        raise
                    log.warning("store or broker unavailable; trying again", error=str(exc))
                    time.sleep(2**attempt)

    def _once(
        self, command: Envelope, payload: _C, body: Callable[[Envelope, _C, _Context], Event]
    ) -> None:
        """Carry out a command whose every delivery after the first changes nothing."""
        if self._replayed(command):
            return
        service = self._fleet.service(payload.environment, payload.service)
        with held(
            self._store,
            f"component/{command.release_id}/{payload.service}",
            owner_prefix=self.actor,
            ttl_s=self._limits.lease_ttl_s,
            finished=lambda: self._store.outcome(work_key(command)) is not None,
            waiting=lambda holder: self.publish(
                ComponentWaiting(
                    environment=payload.environment,
                    service=payload.service,
                    holder=holder or "?",
                ),
                command,
            ),
            # Word well within the step deadline, or the coordinator would give up on us.
            waiting_every_s=min(service.step_timeout_s / 3, 5.0),
        ) as lease:
            if lease is None:
                self._replayed(command)  # finished by the holder while this copy waited
                return
            if self._replayed(command):
                return
            if not self.still_wanted(command, payload.service)[0]:
                log.warning("the saga has moved on from this command; it is not carried out")
                return
            # Counted once the lease is ours: copies that only waited for a live holder
            # are not attempts. A command whose every attempt kills its worker stops here.
            attempts = self._store.count_attempt(work_key(command))
            if attempts > self._limits.delivery_limit:
                reason = f"started {attempts} times without finishing; dead-lettered"
                self._dead_letter(command.encode(), reason)
                self._finish(command, _crashed(payload, reason))
                return
            context = _Context(self, command, payload.environment, payload.service, lease)
            try:
                outcome = body(command, payload, context)
            except LeaseLost:
                log.error("lease lost mid-component; the worker that took over finishes it")
                return
            except Superseded:
                log.warning("the saga moved on mid-component (timed out); its rollback owns it")
                return
            except Exception as exc:  # report the failure rather than leave the saga waiting
                log.exception("component crashed")
                outcome = _crashed(payload, f"worker error: {exc!r}")
            self._finish(command, outcome)

    def _replayed(self, command: Envelope) -> bool:
        """If the command was finished before, say again how it ended, and nothing more."""
        recorded = self._store.outcome(work_key(command))
        if recorded is None:
            return False
        log.info("command already finished; its outcome is published again")
        self._bus.publish(recorded)
        return True

    def _finish(self, command: Envelope, outcome: Event) -> None:
        # Recorded before it is published, under an id derived from the command: after a
        # crash in between, a redelivered copy publishes this very message again, which
        # the coordinator recognises as one it has seen.
        message = self.message(outcome, command, purpose="outcome")
        self._store.record_outcome(work_key(command), message)
        self._bus.publish(message)
        self.crash.reached("worker.before_ack")

    def _deploy(self, command: Envelope, payload: DeployComponent, context: _Context) -> Event:
        service = self._fleet.service(payload.environment, payload.service)
        driver = self._driver(service, command, payload.environment, payload.service, False)
        started = self._started(command, payload, driver, service)
        undo = self._driver(service, command, payload.environment, payload.service, True)
        previous = started.previous_versions
        result = roll_out(
            driver, service.batches(), payload.version, previous, context.run(), undo=undo
        )
        if result.failure is None:
            return ComponentDeployed(
                environment=payload.environment,
                service=payload.service,
                version=payload.version,
                previous_versions=previous,
            )
        return ComponentFailed(
            environment=payload.environment,
            service=payload.service,
            version=payload.version,
            reason=result.failure,
            restored=result.restored,
        )

    def _started(
        self, command: Envelope, payload: DeployComponent, driver: Driver, service: ServiceConfig
    ) -> ComponentStarted:
        """What the hosts ran before this command touched them, recorded once.

        A worker taking over reads the first worker's record: asking the hosts again
        would find some of them already on the new version.
        """
        key = _started_key(command.release_id, payload.service)
        recorded = self._store.outcome(key)
        if recorded is None:
            started = ComponentStarted(
                environment=payload.environment,
                service=payload.service,
                version=payload.version,
                previous_versions={h: driver.current_version(h) for h in service.hosts},
            )
            self._store.record_outcome(key, self.message(started, command, purpose="started"))
            recorded = self._store.outcome(key)  # first write wins: read what was kept
        assert recorded is not None and isinstance(recorded.payload, ComponentStarted)
        self._bus.publish(recorded)
        return recorded.payload

    def _rollback(self, command: Envelope, payload: RollbackComponent, context: _Context) -> Event:
        service = self._fleet.service(payload.environment, payload.service)
        driver = self._driver(service, command, payload.environment, payload.service, True)
        to_versions = payload.to_versions or self._recorded_previous(command, payload)
        result = roll_back(driver, service.batches(), to_versions, context.run())
        if result.error is None:
            return ComponentRolledBack(
                environment=payload.environment,
                service=payload.service,
                to_versions=to_versions,
            )
        return ComponentRollbackFailed(
            environment=payload.environment,
            service=payload.service,
            reason=str(result.error),
            hosts=result.hosts_left,
        )

    def _recorded_previous(self, command: Envelope, payload: RollbackComponent) -> dict[str, str]:
        # The saga sends no versions when the component timed out before its
        # ComponentStarted reached it; the deploying worker recorded them all the same.
        recorded = self._store.outcome(_started_key(command.release_id, payload.service))
        if recorded is None or not isinstance(recorded.payload, ComponentStarted):
            return {}  # never started: no host was touched
        return recorded.payload.previous_versions

    def still_wanted(self, command: Envelope, service: str) -> tuple[bool, str | None]:
        """Is the command still what the saga waits for, and who (if anyone) aborted?

        A deploy that timed out, or whose release has ended, is no longer wanted: its
        rollback (or nothing) now owns the hosts, and it must not touch them again.
        """
        stored = self._store.load(command.release_id)
        if stored is None:
            return True, None
        component = stored.state.components.get(service)
        in_flight = (
            ComponentStatus.DEPLOYING
            if isinstance(command.payload, DeployComponent)
            else ComponentStatus.ROLLING_BACK
        )
        wanted = component is None or component.status is in_flight
        return wanted, stored.state.aborted_by

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

    def message(self, event: Event, command: Envelope, purpose: str | None = None) -> Envelope:
        """An event caused by ``command``; with a ``purpose``, its id repeats for it."""
        return envelope(
            event,
            release_id=command.release_id,
            actor=self.actor,
            causation=command,
            message_id=derived_id(work_key(command), purpose) if purpose else None,
        )

    def publish(self, event: Event, command: Envelope) -> None:
        self._bus.publish(self.message(event, command))


class _Context:
    """One command being carried out: where its steps are reported and journaled."""

    def __init__(
        self,
        runner: ComponentRunner,
        command: Envelope,
        environment: str,
        service: str,
        lease: Lease,
    ):
        self._runner = runner
        self._command = command
        self._environment = environment
        self._service = service
        self._lease = lease

    def run(self) -> Run:
        store = self._runner._store
        return Run(
            report=self,
            journal=_StoreJournal(store, work_key(self._command), self._lease, self._runner.crash),
            undo_journal=_StoreJournal(
                store, f"{work_key(self._command)}/undo", self._lease, self._runner.crash
            ),
            should_stop=self._should_stop,
        )

    def _should_stop(self) -> str | None:
        wanted, aborted_by = self._runner.still_wanted(self._command, self._service)
        if not wanted:
            raise Superseded(self._command.id)
        return f"release aborted by {aborted_by}" if aborted_by else None

    def outcome(self, event: Event) -> None:
        self._lease.check()
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


class _StoreJournal:
    """The steps of one command, in the store, for whoever carries it on after a crash."""

    def __init__(self, store: Store, command_key: str, lease: Lease, crash: CrashPoints):
        self._store = store
        self._key = command_key
        self._lease = lease
        self._crash = crash
        self._steps = {
            h: [Step(s) for s in done] for h, done in store.progress(command_key).items()
        }

    def done(self, host: str) -> Sequence[Step]:
        return self._steps.get(host, [])

    def mark(self, host: str, step: Step) -> None:
        self._crash.reached("worker.after_effect")
        self._lease.check()
        self._store.record_progress(self._key, host, step)
        self._steps.setdefault(host, []).append(step)


def work_key(command: Envelope) -> str:
    """What a command asks done, the same for every copy and every resend of it.

    A release deploys a component once and rolls it back at most once, so the journal,
    the outcome and the attempts of a command are kept under this, not under the
    message's id: a command the coordinator sent again for want of an answer carries on
    from (or replays) the first one's work.
    """
    phase = "deploy" if isinstance(command.payload, DeployComponent) else "rollback"
    service = getattr(command.payload, "service", "")
    return f"{command.release_id}/{service}/{phase}"


class Superseded(Exception):
    """The saga no longer waits for this command (its component timed out, or ended)."""


def _started_key(release_id: str, service: str) -> str:
    # One deploy per component per release: the record is found by either command.
    return f"started/{release_id}/{service}"


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
