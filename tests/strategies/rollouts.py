"""Running a rollout in-process against the fleet simulator, with a real (SQLite) store.

What a worker would publish is kept in a list, in order, so tests can read the story.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.drills import CrashPoints
from orchestrator.fleet import Fleet, ServiceConfig
from orchestrator.fleet.checks import MetricGate
from orchestrator.fleet.stages import Stage, stages_of
from orchestrator.store import StepDone, Store
from orchestrator.vocabulary import Step
from workers.drivers import Colour, StepError
from workers.drivers.simulated import SimulatedDriver
from workers.progress import StoreJournal
from workers.rollout import roll_out
from workers.steps import RollbackResult, RolloutResult, Run
from workers.undo import roll_back
from workers.verification.gates import GateResult

ENVIRONMENT = "prod"


@dataclass
class Story:
    """What the rollout told the world, one tuple per report."""

    said: list[tuple[Any, ...]] = field(default_factory=list)

    def step_started(self, step: Step, batch: int, hosts: Sequence[str], rollback: bool) -> None:
        self.said.append(("started", step, batch, tuple(hosts), rollback))

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
        self.said.append(("succeeded", step, batch, tuple(hosts), rollback))

    def step_failed(
        self, step: Step, batch: int, hosts: Sequence[str], rollback: bool, error: StepError
    ) -> None:
        self.said.append(("failed", step, batch, tuple(hosts), rollback))

    def host_drained(
        self, host: str, waited_ms: float, in_flight_left: int, timed_out: bool
    ) -> None:
        self.said.append(("drained", host, in_flight_left, timed_out))

    def gate_judged(self, step: Step, result: GateResult) -> None:
        self.said.append(("judged", step, result.gate, result.verdict))

    def steps(self) -> list[tuple[str, Step]]:
        """(what, step) of every step report, in order."""
        return [(s[0], s[1]) for s in self.said if s[0] in ("started", "succeeded", "failed")]


Judge = Callable[[Sequence[MetricGate], Step, Mapping[str, Sequence[str]], datetime], Any]


@dataclass(frozen=True)
class Straight:
    """Journal entries recorded as they are marked, one store call each."""

    store: Store

    def journaled(self, done: StepDone) -> None:
        self.store.record_progress(done.command_id, done.host, done.step)

    def settle(self) -> None:
        pass  # nothing is ever waiting


@dataclass
class Rollout:
    """One service of a fleet moved by its strategy, as a worker would."""

    fleet: Fleet
    store: Store
    service: str
    release_id: str
    story: Story = field(default_factory=Story)
    verdicts: list[str] = field(default_factory=list)  # what judge() gives, gate by gate
    holds: list[str] = field(default_factory=list)  # holds asked for
    stop_on_hold: str | None = None  # a hold is answered with this stop (None: approved)

    @property
    def config(self) -> ServiceConfig:
        return self.fleet.service(ENVIRONMENT, self.service)

    def driver(self, *, rollback: bool = False) -> SimulatedDriver:
        config = self.config.driver
        assert config.kind == "simulated"
        return SimulatedDriver(
            config,
            self.store,
            environment=ENVIRONMENT,
            service=self.service,
            release_id=self.release_id,
            rollback=rollback,
        )

    def run(self, phase: str) -> Run:
        def journal(suffix: str) -> StoreJournal:
            key = f"{self.release_id}/{self.service}/{phase}{suffix}"
            return StoreJournal(
                self.store, key, Straight(self.store), lambda: None, CrashPoints(), empty=False
            )

        def hold(name: str, reason: str) -> str | None:
            self.holds.append(name)
            return self.stop_on_hold

        def judge(gates: Sequence[MetricGate], step: Step, *_: object) -> list[GateResult]:
            verdict = self.verdicts.pop(0) if self.verdicts else "pass"
            return [GateResult(g.name, verdict, {}, {}, verdict) for g in gates]  # type: ignore[arg-type]

        return Run(
            report=self.story,
            journal=journal(""),
            undo_journal=journal("/undo"),
            should_stop=lambda: None,
            hold=hold,
            verify_host=lambda host, version: "",
            judge=judge,
            drain_timeout_s=2,
        )

    def stages(self, live: Colour = "blue") -> list[Stage]:
        return stages_of(self.config, self.config.strategy, live)

    def out(self, version: str, live: Colour = "blue") -> RolloutResult:
        previous = {h: self.driver().current_version(h) for h in self.config.hosts}
        return roll_out(
            self.driver(),
            self.stages(live),
            version,
            previous,
            self.run("deploy"),
            undo=self.driver(rollback=True),
            live=live,
        )

    def back(self, to_versions: Mapping[str, str], live: Colour = "blue") -> RollbackResult:
        return roll_back(
            self.driver(rollback=True),
            self.stages(live),
            to_versions,
            self.run("rollback"),
            live=live,
        )

    def versions(self) -> dict[str, str]:
        return {h: self.driver().current_version(h) for h in self.config.hosts}

    def effects(self, step: str) -> int:
        counts = self.store.effects(self.release_id)
        return sum(
            n for (_, service, _, s), n in counts.items() if service == self.service and s == step
        )
