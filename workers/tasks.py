"""The worker's entry points: its three commands as Celery tasks, and what makes them safe.

A task reads its command (``DeployComponent``, ``RollbackComponent``, ``ToggleFlag``),
takes the component's lease, and hands the work to ``workers.components``, which reports
every step and the outcome as events. Whatever goes wrong
in the work itself becomes an outcome the coordinator hears. Only an unreachable store or
broker escapes, after the task has tried again for a while (carrying out a command twice
is harmless: see ``_once``); then the component's deadline brings the saga on.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from orchestrator.bus import DEPLOY_TASK, ROLLBACK_TASK, TOGGLE_TASK, BrokerUnavailable, Bus
from orchestrator.contract import (
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentStarted,
    ComponentWaiting,
    DeployComponent,
    Envelope,
    Event,
    FlagToggleFailed,
    MessageDecodeError,
    RollbackComponent,
    ToggleFlag,
    decode,
    derived_id,
    envelope,
)
from orchestrator.drills import CrashPoints
from orchestrator.fleet import Fleet
from orchestrator.observability import get_logger, message_context
from orchestrator.saga import ComponentStatus, ReleaseState
from orchestrator.store import (
    DeadLetter,
    Held,
    NotHeld,
    Pending,
    StepDone,
    Store,
    StoredRelease,
    StoreUnavailable,
    Word,
    word_key,
)
from workers.components import (
    Work,
    deploy,
    journal_keys,
    roll_back_component,
    started_key,
    toggle,
)
from workers.drivers.factory import writes_effects_to_store
from workers.leases import Lease, LeaseKeeper, LeaseLost, claimed
from workers.progress import ComponentProgress, Superseded, component_name

__all__ = ["ComponentRunner", "WorkerLimits", "register_tasks"]

log = get_logger(__name__)

WorkerCommand = DeployComponent | RollbackComponent | ToggleFlag
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
        self.store = store
        self._bus = bus
        self._limits = limits
        self.crash = crash_points or CrashPoints()
        self._leases = LeaseKeeper(store)
        self._outcomes_routed_in_store = store.shares_redis_with(bus.broker_url)
        # The pid tells apart workers on one machine, in leases and in logs.
        self.actor = f"drover-worker-{os.getpid()}@{socket.gethostname()}"

    def deploy(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, DeployComponent)

    def rollback(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, RollbackComponent)

    def toggle(self, wire: dict[str, Any]) -> None:
        self._carry_out(wire, ToggleFlag)

    def _carry_out(self, wire: dict[str, Any], kind: type[WorkerCommand]) -> None:
        command = self._accept(wire)
        if command is None:
            return
        payload = command.payload
        if not isinstance(payload, kind):
            self._dead_letter(command.encode(), f"{command.type} sent to the {kind.__name__} task")
            return
        assert isinstance(payload, WorkerCommand)  # _accept let through only these
        with message_context(
            release_id=command.release_id, service=payload.service, message_id=command.id
        ):
            for attempt in range(_INFRASTRUCTURE_TRIES):
                try:
                    self._once(command, payload)
                    return
                except (StoreUnavailable, BrokerUnavailable) as exc:
                    if attempt == _INFRASTRUCTURE_TRIES - 1:
                        raise
                    log.warning("store or broker unavailable; trying again", error=str(exc))
                    time.sleep(2**attempt)

    def _once(self, command: Envelope, payload: WorkerCommand) -> None:
        """Carry out a command whose every delivery after the first changes nothing.

        Whether it was finished before is asked in the same store call that takes the
        lease (:func:`claimed`): asked apart, it could be finished in between.
        """
        service = self._fleet.service(payload.environment, payload.service)
        work = work_key(command)
        with claimed(
            self._leases,
            work,
            f"component/{command.release_id}/{component_name(command)}",
            journals=journal_keys(work),
            component=(command.release_id, component_name(command)),
            owner_prefix=self.actor,
            ttl_s=self._limits.lease_ttl_s,
            waiting=lambda holder: self._waiting(command, payload, holder),
            # Word well within the step deadline, or the coordinator would give up on us.
            waiting_every_s=min(service.step_timeout_s / 3, 5.0),
            kept=_started_key(command),
        ) as claim:
            if isinstance(claim, Envelope):
                self._replay(claim)  # finished before, or by the holder while this waited
                return
            try:
                self._carry_on(command, payload, claim)
            finally:
                # Given up (a lease lost), it may leave writes made ahead whose fate it
                # never learned: not for the lease's release, nor the next command, to meet.
                self.store.forget_ahead()

    def _carry_on(self, command: Envelope, payload: WorkerCommand, lease: Lease) -> None:
        try:
            _still_wanted(command, lease.release)  # as the lease was taken: no read of its own
        except Superseded:
            log.warning("the saga has moved on from this command; it is not carried out")
            return
        # Counted as the lease was taken: copies that only waited for a live holder are
        # not attempts. A command whose every attempt kills its worker stops here.
        if lease.attempts > self._limits.delivery_limit:
            reason = f"started {lease.attempts} times without finishing; dead-lettered"
            self._dead_letter(command.encode(), reason)
            self._finish(command, _crashed(payload, reason), lease)
            return
        driver = self._fleet.service(payload.environment, payload.service).driver
        progress = ComponentProgress(
            self, command, lease, effects_in_store=writes_effects_to_store(driver)
        )
        try:
            outcome = self._body(command, payload, lease, progress)
        except (LeaseLost, NotHeld):  # NotHeld: the store found it lost, at a change
            log.error("lease lost mid-component; the worker that took over finishes it")
            return
        except Superseded:
            log.warning("the saga moved on mid-component (timed out); its rollback owns it")
            if not lease.lost:
                with suppress(LeaseLost, NotHeld):  # then what it said is another's to say
                    progress.flush()
            return
        except Exception as exc:  # report the failure rather than leave the saga waiting
            log.exception("component crashed")
            outcome = _crashed(payload, f"worker error: {exc!r}")
        try:
            self._finish(command, outcome, lease, progress)
        except (LeaseLost, NotHeld):  # met in a write made ahead, read as it ends
            log.error("lease lost as the component ended; the worker that took over ends it")

    def _waiting(self, command: Envelope, payload: WorkerCommand, holder: str | None) -> None:
        """Say that this copy waits for the worker holding the component: it is alive."""
        waiting = ComponentWaiting(
            environment=payload.environment, service=payload.service, holder=holder or "?"
        )
        self.report([self.message(waiting, command)], command)

    def _body(
        self, command: Envelope, payload: WorkerCommand, lease: Lease, progress: ComponentProgress
    ) -> Event:
        work = Work(
            fleet=self._fleet,
            store=self.store,
            command=command,
            key=work_key(command),
            progress=progress,
            lease=lease,
            crash=self.crash,
            started=lambda event: self._started(command, event, progress, lease.kept),
            journaled=lease.journaled,
        )
        match payload:
            case DeployComponent():
                return deploy(work, payload)
            case RollbackComponent():
                recorded = lease.kept.payload if lease.kept else None  # read with the lease
                before = recorded if isinstance(recorded, ComponentStarted) else None
                return roll_back_component(work, payload, before)
            case ToggleFlag():
                return toggle(work, payload)

    def _started(
        self,
        command: Envelope,
        event: ComponentStarted,
        progress: ComponentProgress,
        recorded: Envelope | None,
    ) -> ComponentStarted:
        """What the hosts ran before this command touched them, recorded once.

        A worker taking over goes by the first worker's record (``recorded``, read with
        the lease): asking the hosts again would find some of them already on the new
        version. The first records it with its first step's start, before any effect.
        """
        if recorded is not None:
            assert isinstance(recorded.payload, ComponentStarted)
            progress.keep(recorded)
            return recorded.payload
        key = _started_key(command)
        assert key is not None  # a deploy's
        progress.keep_first(key, self.message(event, command, purpose="started"))
        return event

    def _replay(self, recorded: Envelope) -> None:
        """Say again how a command finished before, and nothing more."""
        log.info("command already finished; its outcome is published again")
        self._bus.publish(recorded)

    def _finish(
        self,
        command: Envelope,
        outcome: Event,
        lease: Lease,
        progress: ComponentProgress | None = None,
    ) -> None:
        # Recorded before it is published, under an id derived from the command: after a
        # crash in between, a redelivered copy publishes this very message again, which
        # the coordinator recognises as one it has seen. What is published is what was
        # kept: the first outcome recorded for the command, should a copy have been first.
        # What was said since the last word is recorded with it, a crash's reports
        # included; a worker that lost its lease to another says nothing more.
        # Where the store is the broker's Redis, the outcome is pushed onto the queues it
        # is routed to in that same step, and not published after: nothing is left to
        # publish, and no crash can come between the two.
        message = self.message(outcome, command, purpose="outcome")
        reports, done = progress.take() if progress and not lease.lost else ([], [])
        last = self._word(command, reports, done) if reports or done else None
        routed = self._bus.routed(message) if self._outcomes_routed_in_store else None
        finished = lease.finish(message, last, routed)
        self._bus.publish_progress(reports)
        if finished.routed:
            self._bus.metrics.record(finished.kept)  # as its publish would count it
        else:
            self._bus.publish(finished.kept)
        self.crash.reached("worker.before_ack")

    def wanted_state(self, command: Envelope) -> ReleaseState | None:
        """The release, if the saga still waits for ``command``; raises Superseded if not
        (:func:`_still_wanted`)."""
        # Only this component: a worker of a wide release must not read all of them.
        stored = self.store.load(command.release_id, components=[component_name(command)])
        return _still_wanted(command, stored)

    def _accept(self, wire: dict[str, Any]) -> Envelope | None:
        """The command, if it can be carried out here; otherwise it is dead-lettered."""
        try:
            command = decode(wire)
        except MessageDecodeError as error:
            self._dead_letter(error.raw, str(error))
            return None
        payload = command.payload
        if not isinstance(payload, WorkerCommand):
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
        self.store.add_dead_letter(
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

    def publish(self, event: Event, command: Envelope, purpose: str | None = None) -> None:
        self._bus.publish(self.message(event, command, purpose))

    def report(
        self,
        reports: Sequence[Envelope],
        command: Envelope,
        done: Sequence[StepDone] = (),
        keep: tuple[str, Envelope] | None = None,
        under: Held | None = None,
    ) -> None:
        """Step reports: into the release's timeline, with the time of this word from
        the command's worker (what its deadline is judged by), the steps done since its
        last word and what it ``keep``s (:meth:`ComponentProgress.keep_first`), then out
        to listeners; ``under`` the command's lease, if it holds one."""
        kept = self.store.record_reports(self._word(command, reports, done, keep), under)
        if kept is not None:
            raise LeaseLost(f"another worker's {kept.type} was kept first")
        self.publish_reports(reports)

    def report_ahead(
        self,
        reports: Sequence[Envelope],
        command: Envelope,
        done: Sequence[StepDone],
        keep: tuple[str, Envelope] | None,
        under: Held,
    ) -> Pending[None]:
        return self.store.record_reports_ahead(self._word(command, reports, done, keep), under)

    def publish_reports(self, reports: Sequence[Envelope]) -> None:
        self._bus.publish_progress(reports)

    def _word(
        self,
        command: Envelope,
        reports: Sequence[Envelope],
        done: Sequence[StepDone],
        keep: tuple[str, Envelope] | None = None,
    ) -> Word:
        payload = command.payload
        key = word_key(
            component_name(command),
            rollback=_undoes(payload),
            attempt=getattr(payload, "attempt", 1),
        )
        return Word(command.release_id, key, datetime.now(UTC), reports, done, keep)


def work_key(command: Envelope) -> str:
    """What a command asks done, the same for every copy and every resend of it.

    A release deploys a component once and rolls it back at most once, so the journal,
    the outcome and the attempts of a command are kept under this, not under the
    message's id: a command the coordinator sent again for want of an answer carries on
    from (or replays) the first one's work.
    """
    payload = command.payload
    match payload:
        case DeployComponent():
            phase = "deploy"
        case RollbackComponent():
            phase = "rollback"
        case _:
            phase = "undo" if getattr(payload, "undo", False) else "flip"
    attempt = getattr(payload, "attempt", 1)
    return f"{command.release_id}/{component_name(command)}/{phase}/{attempt}"


def _started_key(command: Envelope) -> str | None:
    """Where a deploy's record of what its hosts ran is kept (its rollback reads it); None
    for a flag's flip."""
    payload = command.payload
    if not isinstance(payload, DeployComponent | RollbackComponent):
        return None
    return started_key(command.release_id, payload.service, payload.attempt)


def _still_wanted(command: Envelope, stored: StoredRelease | None) -> ReleaseState | None:
    """The release, if the saga still waits for ``command``; raises Superseded if not.

    A deploy that timed out, or whose release has ended or been retried, is no longer
    wanted: its rollback (or nothing, or the next attempt) now owns the hosts, and it
    must not touch them again. None: the store does not know the release. ``stored`` holds
    the command's component alone (or none, if the release has no such component).
    """
    if stored is None:
        return None
    component = stored.state.components.get(component_name(command))
    if component is None:
        return stored.state
    payload = command.payload
    in_flight = ComponentStatus.ROLLING_BACK if _undoes(payload) else ComponentStatus.DEPLOYING
    if component.status is not in_flight or component.attempt != getattr(payload, "attempt", 1):
        raise Superseded(command.id)
    return stored.state


def _undoes(payload: object) -> bool:
    """Whether a command undoes its component (a rollback, or a flag flipped back)."""
    # Asked of the types that have ``undo``: pydantic answers a missing attribute slowly.
    return isinstance(payload, RollbackComponent) or (
        isinstance(payload, ToggleFlag) and payload.undo
    )


def _crashed(payload: WorkerCommand, reason: str) -> Event:
    if isinstance(payload, ToggleFlag):
        return FlagToggleFailed(
            environment=payload.environment,
            service=payload.service,
            flag=payload.flag,
            reason=reason,
            undo=payload.undo,
        )
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
    app.task(name=TOGGLE_TASK, acks_late=True)(runner.toggle)
