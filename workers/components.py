"""What a worker does for each command: deploy, roll back, flip a flag.

Each body gets the command and where to report, runs the service's strategy with its
driver, and returns the event that says how it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from orchestrator.contract import (
    ComponentDeployed,
    ComponentFailed,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    DeployComponent,
    Envelope,
    Event,
    FlagToggled,
    FlagToggleFailed,
    RollbackComponent,
    ToggleFlag,
)
from orchestrator.drills import CrashPoints
from orchestrator.fleet import Fleet, ServiceConfig
from orchestrator.fleet.stages import stages_of
from orchestrator.fleet.strategies import BlueGreenStrategy, Strategy
from orchestrator.store import Store
from orchestrator.vocabulary import Step
from workers.drivers import Colour, Driver, StepError
from workers.drivers.factory import driver_for
from workers.leases import Lease
from workers.progress import ComponentProgress, StoreJournal
from workers.rollout import roll_out
from workers.steps import Run
from workers.undo import roll_back
from workers.verification.wiring import gate_judge, host_checker

__all__ = ["Work", "started_key"]

_DEFAULT_LIVE: Colour = "blue"  # before blue/green was ever used, blue serves


@dataclass(frozen=True)
class Work:
    """One command being carried out, with what it needs from the worker."""

    fleet: Fleet
    store: Store
    command: Envelope
    key: str  # the work key: what the command asks, the same for every copy of it
    progress: ComponentProgress
    lease: Lease  # on the component: checked before each change, and by the store at it
    crash: CrashPoints
    started: Callable[[ComponentStarted], ComponentStarted]  # recorded once, then as kept
    journaled: frozenset[str]  # those of its journals that had entries when it was claimed

    def journal(self, suffix: str) -> StoreJournal:
        key = self.key + suffix
        return StoreJournal(
            self.store,
            key,
            self.progress,
            self.lease.check,
            self.crash,
            empty=key not in self.journaled,
        )

    def service(self, environment: str, name: str) -> ServiceConfig:
        return self.fleet.service(environment, name)

    def driver(self, environment: str, service: str, *, rollback: bool) -> Driver:
        return driver_for(
            self.service(environment, service).driver,
            self.store,
            environment=environment,
            service=service,
            release_id=self.command.release_id,
            rollback=rollback,
            under=self.lease.held,
        )

    def run(
        self,
        environment: str,
        service: str,
        strategy: Strategy,
        before: ComponentStarted | None,
    ) -> Run:
        driver = self.driver(environment, service, rollback=False)
        hosts = self.service(environment, service).hosts
        env = self.fleet.environments[environment]
        return Run(
            report=self.progress,
            journal=self.journal(_FORWARD),
            undo_journal=self.journal(_UNDO),
            should_stop=self.progress.should_stop,
            hold=self.progress.hold,
            verify_host=host_checker(env, environment, service),
            judge=gate_judge(
                env,
                environment,
                service,
                versions_now=lambda: driver.current_versions(hosts),
                versions_before=before.previous_versions if before else {},
            ),
            drain_timeout_s=_drain_timeout_s(strategy),
        )


def deploy(work: Work, payload: DeployComponent) -> Event:
    service = work.service(payload.environment, payload.service)
    strategy = payload.strategy or service.strategy
    driver = work.driver(payload.environment, payload.service, rollback=False)
    blue_green = isinstance(strategy, BlueGreenStrategy)
    live = (driver.live_colour() or _DEFAULT_LIVE) if blue_green else None
    started = work.started(
        ComponentStarted(
            environment=payload.environment,
            service=payload.service,
            version=payload.version,
            previous_versions=driver.current_versions(service.hosts),
            live_colour=live,
        )
    )
    previous = started.previous_versions
    serving = started.live_colour or _DEFAULT_LIVE
    result = roll_out(
        driver,
        stages_of(service, strategy, serving),
        payload.version,
        previous,
        work.run(payload.environment, payload.service, strategy, started),
        undo=work.driver(payload.environment, payload.service, rollback=True),
        live=serving,
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


def roll_back_component(
    work: Work, payload: RollbackComponent, before: ComponentStarted | None
) -> Event:
    """Undo a deployed component: hosts back to their versions, or blue/green switched back."""
    service = work.service(payload.environment, payload.service)
    strategy = payload.strategy or service.strategy
    # The saga sends no versions for a component that timed out (only an outcome carries
    # them to it); the deploying worker recorded them before its first effect.
    to_versions = payload.to_versions or (before.previous_versions if before else {})
    if before is None and not payload.to_versions:
        return ComponentRolledBack(
            environment=payload.environment, service=payload.service, to_versions={}
        )  # never started: no host was touched
    serving = (before.live_colour if before else None) or _DEFAULT_LIVE
    result = roll_back(
        work.driver(payload.environment, payload.service, rollback=True),
        stages_of(service, strategy, serving),
        to_versions,
        work.run(payload.environment, payload.service, strategy, before),
        live=serving,
    )
    if result.error is None:
        return ComponentRolledBack(
            environment=payload.environment, service=payload.service, to_versions=to_versions
        )
    return ComponentRollbackFailed(
        environment=payload.environment,
        service=payload.service,
        reason=str(result.error),
        hosts=result.hosts_left,
    )


def toggle(work: Work, payload: ToggleFlag) -> Event:
    """Turn a flag to what the release asks; undone, back to what it was before."""
    driver = work.driver(payload.environment, payload.service, rollback=payload.undo)
    # What the flag was before the release, recorded by the first forward flip and read
    # by its undo: a flip the release never made is not undone.
    record = started_key(
        work.command.release_id, f"{payload.service}.{payload.flag}", payload.attempt
    )
    try:
        now = driver.flag(payload.flag)
        if not payload.undo:
            work.store.record_progress(record, "was", "on" if now else "off")
        was = work.store.progress(record).get("was", ["on" if now else "off"])[0] == "on"
        target = was if payload.undo else payload.enabled
        work.progress.step_started(Step.TOGGLE, 1, (), payload.undo)
        output = driver.set_flag(payload.flag, target)
        work.progress.step_succeeded(Step.TOGGLE, 1, (), payload.undo, duration_ms=0, output=output)
    except StepError as error:
        work.progress.step_failed(Step.TOGGLE, 1, (), payload.undo, error)
        return FlagToggleFailed(
            environment=payload.environment,
            service=payload.service,
            flag=payload.flag,
            reason=str(error),
            undo=payload.undo,
        )
    return FlagToggled(
        environment=payload.environment,
        service=payload.service,
        flag=payload.flag,
        enabled=target,
        previously=now,
        undo=payload.undo,
    )


def _drain_timeout_s(strategy: Strategy) -> float:
    # An idle colour serves nothing, so nothing is drained in blue/green.
    return 0 if isinstance(strategy, BlueGreenStrategy) else strategy.drain_timeout_s


# A command's journals: the steps of its rollout, and those putting back a failed one.
_FORWARD: Final = ""
_UNDO: Final = "/undo"


def journal_keys(work_key: str) -> list[str]:
    """The journals of the command whose work is ``work_key``, as :class:`Work` keeps them."""
    return [work_key + suffix for suffix in (_FORWARD, _UNDO)]


def started_key(release_id: str, service: str, attempt: int) -> str:
    # One deploy per component per attempt: the record is found by either command.
    return f"started/{release_id}/{service}/{attempt}"
