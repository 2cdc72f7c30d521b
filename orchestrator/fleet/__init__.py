"""The fleet file: environment as code.

Per environment its services and where its metrics are read; per service its hosts,
driver, strategy, health checks, metric gates and whether a human must approve. Read
once, into frozen models; everything a worker or the saga needs later is checked here.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, ValidationInfo, field_validator, model_validator

from orchestrator.fleet.access import AccessGroups, EnvironmentAccess, access_problem
from orchestrator.fleet.base import FleetModel
from orchestrator.fleet.checks import HealthChecks, MetricGate, MetricSource
from orchestrator.fleet.drivers import DriverConfig, HttpDriverConfig, ShellDriverConfig
from orchestrator.fleet.strategies import (
    BlueGreenStrategy,
    CanaryStrategy,
    RollingStrategy,
    Strategy,
)
from orchestrator.vocabulary import HostName, Name

__all__ = [
    "ApprovalPolicy",
    "EnvironmentConfig",
    "Fleet",
    "ServiceConfig",
    "flips_flags",
    "gate_sources",
    "strategy_problem",
]


class ApprovalPolicy(FleetModel):
    """When a release in an environment stops for a human before it starts."""

    required: bool = False  # every release needs an approval
    separate_approver: bool = False  # the approver may not be who asked for the release


class ServiceConfig(FleetModel):
    hosts: tuple[HostName, ...] = Field(min_length=1)
    driver: DriverConfig
    strategy: Strategy = RollingStrategy(kind="rolling")
    health: HealthChecks | None = None
    gates: tuple[MetricGate, ...] = ()  # judged once every host is on the new version
    requires_approval: bool = False  # a component of this service waits for an approval
    # How long the coordinator waits for word from the worker before it treats the
    # component as failed: between two reports, and for the whole component.
    step_timeout_s: float = Field(default=300, gt=0, le=86_400)
    component_timeout_s: float = Field(default=3600, gt=0, le=7 * 86_400)

    # Field validators, not a model validator, so each problem carries its field's path.
    @field_validator("hosts")
    @classmethod
    def _hosts_are_unique(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for host in hosts:
            if host in seen:
                raise ValueError(f"host {host!r} is listed twice")
            seen.add(host)
        return hosts

    @field_validator("driver")
    @classmethod
    def _injections_name_known_hosts(
        cls, driver: DriverConfig, info: ValidationInfo
    ) -> DriverConfig:
        hosts = info.data.get("hosts")
        if hosts is None or driver.kind != "simulated":
            return driver  # invalid hosts are reported as such
        for index, injection in enumerate(driver.fail):
            if injection.host is not None and injection.host not in hosts:
                raise ValueError(f"fail[{index}].host {injection.host!r} is not in hosts")
        return driver

    @field_validator("strategy")
    @classmethod
    def _strategy_fits(cls, strategy: Strategy, info: ValidationInfo) -> Strategy:
        hosts, driver = info.data.get("hosts"), info.data.get("driver")
        if hosts is not None and driver is not None:
            problem = strategy_problem(strategy, hosts, driver)
            if problem:
                raise ValueError(problem)
        return strategy

    def gate_sources(self) -> Iterator[tuple[str, MetricGate]]:
        """Every gate of the service with its field path, for checking their sources."""
        for index, gate in enumerate(self.gates):
            yield f"gates[{index}]", gate
        for where, gate in gate_sources(self.strategy):
            yield f"strategy.{where}", gate


def gate_sources(strategy: Strategy) -> Iterator[tuple[str, MetricGate]]:
    """The gates of a strategy's canary analyses, with their paths within the strategy."""
    if isinstance(strategy, CanaryStrategy):
        for number, step in enumerate(strategy.steps):
            for index, gate in enumerate(step.analysis.gates if step.analysis else ()):
                yield f"steps[{number}].analysis.gates[{index}]", gate


def flips_flags(driver: DriverConfig) -> bool:
    """Can this driver turn feature flags on and off?"""
    if isinstance(driver, ShellDriverConfig):
        return driver.commands.set_flag is not None
    if isinstance(driver, HttpDriverConfig):
        return driver.flags is not None
    return True  # the simulator keeps flags in the store


def strategy_problem(strategy: Strategy, hosts: tuple[str, ...], driver: DriverConfig) -> str:
    """Why ``strategy`` cannot move these hosts with this driver; "" when it can.

    Used for the fleet file and for a release that gives a component its own strategy.
    """
    if isinstance(strategy, BlueGreenStrategy):
        colours = {*strategy.blue, *strategy.green}
        if colours != set(hosts):
            missing = sorted(set(hosts) - colours)
            unknown = sorted(colours - set(hosts))
            parts = ([f"not in a colour: {', '.join(missing)}"] if missing else []) + (
                [f"not in hosts: {', '.join(unknown)}"] if unknown else []
            )
            return "blue and green must share out the hosts exactly; " + "; ".join(parts)
        if isinstance(driver, ShellDriverConfig) and not (
            driver.commands.switch and driver.commands.live_colour
        ):
            return "blue_green with a shell driver needs its switch and live_colour commands"
        return ""
    if isinstance(strategy, CanaryStrategy) and len(hosts) < 2:
        return "a canary needs at least 2 hosts: the canary and a baseline to compare it with"
    if strategy.floor(len(hosts)) >= len(hosts):
        return (
            f"min_healthy {strategy.min_healthy!r} keeps all {len(hosts)} hosts serving:"
            " no host could ever be deployed"
        )
    return ""


class EnvironmentConfig(FleetModel):
    services: dict[Name, ServiceConfig] = Field(min_length=1)
    metrics: dict[Name, MetricSource] = Field(
        default_factory=dict
    )  # where metric gates read, by name
    approval: ApprovalPolicy = ApprovalPolicy()
    # Who may deploy, approve and operate here by chat; none: nobody may.
    access: EnvironmentAccess | None = None

    @model_validator(mode="after")
    def _access_names_known_services(self) -> EnvironmentConfig:
        problem = access_problem(self.access, self.services) if self.access else ""
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _gates_read_known_sources(self) -> EnvironmentConfig:
        for name, service in self.services.items():
            for path, gate in service.gate_sources():
                if gate.source not in self.metrics:
                    known = ", ".join(sorted(self.metrics)) or "none"
                    raise ValueError(
                        f"services.{name}.{path}.source: unknown metric source"
                        f" {gate.source!r} (this environment's metrics: {known})"
                    )
        return self


class Fleet(FleetModel):
    environments: dict[Name, EnvironmentConfig] = Field(min_length=1)
    access: AccessGroups = AccessGroups()  # named groups of chat users

    def service(self, environment: str, service: str) -> ServiceConfig:
        return self.environments[environment].services[service]

    def service_names(self) -> list[str]:
        """Every service of every environment, once each, sorted."""
        return sorted({s for env in self.environments.values() for s in env.services})
