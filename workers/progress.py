"""One command being carried out: where its steps are reported and journaled, and how it
waits for people (a pause, an approval) without losing its place."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from orchestrator.contract import (
    ComponentHeld,
    Envelope,
    Event,
    GateJudged,
    HostDrained,
    StepFailed,
    StepStarted,
    StepSucceeded,
    ToggleFlag,
)
from orchestrator.drills import CrashPoints
from orchestrator.observability import get_logger
from orchestrator.saga import ReleaseState
from orchestrator.store import Held, Pending, StepDone, Store
from orchestrator.vocabulary import Step
from workers.drivers import StepError
from workers.leases import Lease
from workers.verification.gates import GateResult

__all__ = ["ComponentProgress", "JournalRecord", "StoreJournal", "Superseded", "component_name"]

log = get_logger(__name__)

_LOOK_EVERY_S: Final = 1.0  # how often a waiting worker looks at the release
_REMIND_EVERY_S: Final = 30.0  # a hold the saga has not recorded is said again this often
# Steps that change a host or the service first thing; the others check or wait first.
_EFFECT_STEPS: Final = frozenset({Step.DRAIN, Step.DEPLOY, Step.UNDRAIN, Step.SWITCH, Step.TOGGLE})


class Superseded(Exception):
    """The saga no longer waits for this command (its component timed out, or ended)."""


class _Runner(Protocol):
    """What progress needs of the worker that carries the command out."""

    @property
    def store(self) -> Store: ...

    @property
    def crash(self) -> CrashPoints: ...

    def publish(self, event: Event, command: Envelope, purpose: str | None = None) -> None: ...

    def message(self, event: Event, command: Envelope) -> Envelope: ...

    def report(
        self,
        reports: Sequence[Envelope],
        command: Envelope,
        done: Sequence[StepDone],
        keep: tuple[str, Envelope] | None,
        under: Held,
    ) -> None: ...

    def report_ahead(
        self,
        reports: Sequence[Envelope],
        command: Envelope,
        done: Sequence[StepDone],
        keep: tuple[str, Envelope] | None,
        under: Held,
    ) -> Pending[None]:
        """:meth:`report`'s record, made ahead; the reports are published once it is on
        record (:meth:`publish_reports`)."""
        ...

    def publish_reports(self, reports: Sequence[Envelope]) -> None: ...

    def wanted_state(self, command: Envelope) -> ReleaseState | None:
        """The release, if the saga still waits for ``command``; raises Superseded if not."""
        ...


class ComponentProgress:
    """Reports steps as events, and answers the rollout's "stop?" and "go on?" questions.

    Reports are recorded in batches (the release's timeline and the time of the
    worker's last word, in the store; then published for listeners): each is kept
    until a step starts (its effects come next, and must be on record first), the
    rollout waits (for a person, or while the release is paused), or the command ends
    (:meth:`flush`; or :meth:`take`, to be recorded with the outcome). So the reports
    made between two steps (a step's success, the hosts it drained, the next step's
    start) are one write, and none waits longer than the code between two steps takes.
    The journals' entries (:class:`StoreJournal`) go in the same writes: a step done is
    on record before the next effect, whichever comes first of the next step's start and
    the next host's effect (:meth:`settle`).

    When the effects are themselves writes to the store (``effects_in_store``: the
    simulator's), a word is recorded the way the fleet's changes are
    (``Store.record_reports_ahead``): not waited for, committed in order with them, not
    waited on the disk for, and under the command's lease like them (a store may have it
    before it answers the change made before it, which a lost lease refuses). A step
    done is then on record whenever the next effect is (and never without its own), its
    reports published and its failure raised once it is on record; before a check or a
    wait, a word is made ahead and waited for. The word that keeps the component's start
    goes the same way: it is fenced by the lease as the changes after it are, and a
    store that keeps it commits it waiting for the disk, no later than those changes.

    Every word is made under the command's lease: one whose maker's lease is another's
    records nothing (NotHeld), so a worker that froze past its lease neither keeps what
    its hosts ran nor reports for a component another worker carries on.
    """

    def __init__(self, runner: _Runner, command: Envelope, lease: Lease, *, effects_in_store: bool):
        self._runner = runner
        self._command = command
        self._environment: str = getattr(command.payload, "environment", "")
        self._service: str = getattr(command.payload, "service", "")
        self._component = component_name(command)
        self._lease = lease
        self._unsent: list[Envelope] = []
        self._done: list[StepDone] = []
        self._keep: tuple[str, Envelope] | None = None  # kept with the next write
        self._effects_in_store = effects_in_store
        self._ahead: list[tuple[Pending[None], Sequence[Envelope]]] = []  # made ahead, unconfirmed

    def keep(self, message: Envelope) -> None:
        """Report a message already made (and recorded apart) with the next batch."""
        self._unsent.append(message)

    def keep_first(self, key: str, message: Envelope) -> None:
        """Report ``message`` with the next batch, and keep it under ``key`` (as an
        outcome is kept) in the same write, which comes before any effect. Should another
        be kept there first, that write records nothing and raises :class:`LeaseLost`
        (NotHeld, made ahead): only a holder of the lease before this one can have kept
        one, and this one's lease read it as it was taken."""
        self._unsent.append(message)
        self._keep = key, message

    def flush(self) -> None:
        """Record the reports and journal entries kept so far, and publish the reports
        for listeners."""
        if self._effects_in_store:
            self._record_ahead()
            self._confirm()
            return
        keep, self._keep = self._keep, None
        reports, done = self.take()
        if reports or done or keep:
            self._runner.report(reports, self._command, done, keep, self._lease.held)

    def take(self) -> tuple[list[Envelope], list[StepDone]]:
        """The reports and journal entries kept so far, for the caller to record. What
        was to be kept with them is not: a command that ends before its first write
        touched nothing, and needs no record of what it found."""
        self._confirm()  # what was made ahead is on record before what follows it
        taken = self._unsent, self._done
        self._unsent, self._done, self._keep = [], [], None
        return taken

    def journaled(self, done: StepDone) -> None:
        """A step done, recorded with the next write, which comes before the next effect."""
        self._confirm(waiting=False)  # what the effect just done carried, if it wrote
        self._done.append(done)

    def settle(self) -> None:
        """Record the steps done so far: another host's effect (or check) comes next."""
        if self._done:
            self._record(ahead=True)

    def _record(self, *, ahead: bool) -> None:
        """Record what was kept so far: ``ahead`` if what comes next is an effect written
        to the store, which carries it, or a check, which needs nothing on record."""
        if ahead and self._effects_in_store:
            self._record_ahead()
        else:
            self.flush()

    def _record_ahead(self) -> None:
        if self._unsent or self._done:  # what is kept is reported too
            reports, done, keep = self._unsent, self._done, self._keep
            self._unsent, self._done, self._keep = [], [], None
            held = self._lease.held
            recording = self._runner.report_ahead(reports, self._command, done, keep, held)
            self._ahead.append((recording, reports))

    def _confirm(self, *, waiting: bool = True) -> None:
        """Publish the reports of what was made ahead once it is on record, and raise
        what recording it raised: waiting for it, or only as far as it is on record."""
        while self._ahead:
            recording, reports = self._ahead[0]
            if not (waiting or recording.done()):
                return  # nothing was written after it yet (a check, a host already so)
            del self._ahead[0]
            recording.wait()
            self._runner.publish_reports(reports)

    # --- asked by the rollout -------------------------------------------------------------

    def should_stop(self) -> str | None:
        """Between stages: why to stop (an abort), or None; waits while a human paused."""
        waited = False
        while True:
            state = self._runner.wanted_state(self._command)
            if state is None:
                return None
            if state.aborted_by:
                return f"release aborted by {state.aborted_by}"
            if state.paused_by is None:
                return None
            if not waited:
                log.info("release paused; waiting before the next stage", by=state.paused_by)
                self.flush()
                waited = True
            self._wait()

    def hold(self, hold: str, reason: str) -> str | None:
        """Stop for a human: None once the hold is approved, or why to stop instead."""
        self.flush()
        said_at = 0.0
        while True:
            state = self._runner.wanted_state(self._command)
            component = state.components.get(self._component) if state else None
            if component is None or hold in component.approved:
                return None
            if state is not None and state.aborted_by:
                return f"release aborted by {state.aborted_by}"
            if component.held != hold and time.monotonic() - said_at > _REMIND_EVERY_S:
                # Said again until the saga has it: the first saying may have been lost.
                held = ComponentHeld(
                    environment=self._environment, service=self._service, hold=hold, reason=reason
                )
                self._runner.publish(held, self._command)
                said_at = time.monotonic()
            self._wait()

    def _wait(self) -> None:
        self._lease.check()
        time.sleep(_LOOK_EVERY_S)

    # --- the Reporter ---------------------------------------------------------------------

    def step_started(self, step: Step, batch: int, hosts: Sequence[str], rollback: bool) -> None:
        log.info("step started", step=step, batch=batch, hosts=list(hosts), rollback=rollback)
        self._say(StepStarted(**self._where(step, batch, hosts, rollback)))

    def step_succeeded(
        self,
        step: Step,
        batch: int,
        hosts: Sequence[str],
        rollback: bool,
        *,
        duration_ms: float,
        output: str,
    ) -> None:
        where = self._where(step, batch, hosts, rollback)
        self._say(StepSucceeded(**where, duration_ms=duration_ms, output=output))

    def step_failed(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool, error: StepError
    ) -> None:
        log.warning(
            "step failed",
            step=step,
            batch=batch,
            host=error.host,
            reason=error.reason,
            rollback=rollback,
        )
        self._say(
            StepFailed(
                **self._where(step, batch, hosts, rollback),
                host=error.host,
                reason=error.reason,
                output=error.output[-8000:],
            )
        )

    def host_drained(
        self, host: str, waited_ms: float, in_flight_left: int, timed_out: bool
    ) -> None:
        if timed_out:
            log.warning("drain timed out with requests in flight", host=host, left=in_flight_left)
        self._say(
            HostDrained(
                environment=self._environment,
                service=self._service,
                host=host,
                waited_ms=waited_ms,
                in_flight_left=in_flight_left,
                timed_out=timed_out,
            )
        )

    def gate_judged(self, step: Step, result: GateResult) -> None:
        self._say(
            GateJudged(
                environment=self._environment,
                service=self._service,
                step=step,
                gate=result.gate,
                verdict=result.verdict,
                inputs=result.inputs,
                thresholds=result.thresholds,
                reason=result.reason,
            )
        )

    def _say(self, event: Event) -> None:
        self._lease.check()
        self._unsent.append(self._runner.message(event, self._command))
        if isinstance(event, StepStarted):
            # A step that waits or checks first is on record while it does.
            self._record(ahead=event.step in _EFFECT_STEPS)

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


class JournalRecord(Protocol):
    """Where a journal's entries are recorded: they are on record once settled."""

    def journaled(self, done: StepDone) -> None: ...

    def settle(self) -> None: ...


class StoreJournal:
    """The steps of one command, in the store, for whoever carries it on after a crash."""

    def __init__(
        self,
        store: Store,
        command_key: str,
        record: JournalRecord,
        check: Callable[[], None],
        crash: CrashPoints,
        *,
        empty: bool,
    ):
        self._store = store
        self._key = command_key
        self._record = record
        self._check = check
        self._crash = crash
        self._empty = empty  # known to have no entries: only this worker writes them now

    @functools.cached_property
    def _steps(self) -> dict[str, list[Step]]:
        # Read when first asked, and only if it may have entries: a first attempt's
        # journal has none, and a put-back journal is mostly never asked at all.
        if self._empty:
            return {}
        done = self._store.progress(self._key)
        return {host: [Step(s) for s in steps] for host, steps in done.items()}

    def done(self, host: str) -> Sequence[Step]:
        return self._steps.get(host, [])

    def mark(self, host: str, step: Step) -> None:
        self._crash.reached("worker.after_effect")
        self._check()
        self._record.journaled(StepDone(self._key, host, step))
        self._steps.setdefault(host, []).append(step)

    def settle(self) -> None:
        self._record.settle()


def component_name(command: Envelope) -> str:
    """The component a worker's command is about: its service, or ``service.flag``."""
    payload = command.payload
    service: str = getattr(payload, "service", "")
    return f"{service}.{payload.flag}" if isinstance(payload, ToggleFlag) else service
