"""How Drover reaches a service's hosts: the simulator, commands, or an HTTP API."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from orchestrator.fleet.base import FleetModel, Placeholders
from orchestrator.vocabulary import HostName, Step, Version

__all__ = [
    "DriverConfig",
    "FailureInjection",
    "HttpDriverConfig",
    "ShellCommands",
    "ShellDriverConfig",
    "SimulatedDriverConfig",
]


class FailureInjection(FleetModel):
    """Make the simulator fail a step, or stall in it, for demos, tests and drills.

    Every field given must match; ``version`` and ``host`` left out match any. With
    ``stall_ms`` the step does not fail: it goes silent that long, then succeeds.
    """

    step: Step
    version: Version | None = None
    host: HostName | None = None
    stall_ms: int | None = Field(default=None, ge=1, le=3_600_000)

    def matches(self, step: Step, version: str, host: str) -> bool:
        return self.step == step and self.version in (None, version) and self.host in (None, host)


class SimulatedDriverConfig(FleetModel):
    """A fleet simulator: host state lives in the store, effects are counted."""

    kind: Literal["simulated"]
    initial_version: Version
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    fail: tuple[FailureInjection, ...] = ()
    # Requests a host is serving when it is drained, and how long each one still takes:
    # a drain waits for them (up to the strategy's drain_timeout_s).
    in_flight: int = Field(default=0, ge=0, le=1_000_000)
    request_ms: int = Field(default=0, ge=0, le=600_000)


_COMMAND_FIELDS: Final = frozenset({"host", "service", "environment"})
_FIELDS_BY_COMMAND: Final = {
    "deploy": _COMMAND_FIELDS | {"version"},
    "verify": _COMMAND_FIELDS | {"version"},
    "switch": frozenset({"service", "environment", "colour"}),
    "live_colour": frozenset({"service", "environment"}),
    "set_flag": frozenset({"service", "environment", "flag", "enabled"}),
    "get_flag": frozenset({"service", "environment", "flag"}),
}

Argv = tuple[str, ...]


class ShellCommands(FleetModel):
    """One command per action, as a list of arguments with ``{placeholders}``.

    ``version`` prints the version a host runs; ``in_flight`` prints how many requests it
    still serves; ``live_colour`` prints ``blue`` or ``green``; ``get_flag`` prints
    ``on`` or ``off`` (or true/false, 1/0). Any other command succeeds by exiting 0.
    A literal brace cannot be written: ``{name}`` is always a placeholder.
    """

    version: Argv = Field(min_length=1)
    drain: Argv = Field(min_length=1)
    deploy: Argv = Field(min_length=1)
    undrain: Argv = Field(min_length=1)
    verify: Argv | None = None
    in_flight: Argv | None = None
    switch: Argv | None = None
    live_colour: Argv | None = None
    set_flag: Argv | None = None
    get_flag: Argv | None = None

    @field_validator("*")
    @classmethod
    def _placeholders(cls, argv: Argv | None, info: ValidationInfo) -> Argv | None:
        if argv is None:
            return None
        if not argv:
            raise ValueError("a command needs at least the program to run")
        allowed = _FIELDS_BY_COMMAND.get(info.field_name or "", _COMMAND_FIELDS)
        return tuple(Placeholders.check(arg, allowed) for arg in argv)

    @model_validator(mode="after")
    def _pairs(self) -> ShellCommands:
        # One of a pair without the other loads fine and fails mid-release: refuse it here.
        for one, other in (("switch", "live_colour"), ("set_flag", "get_flag")):
            if (getattr(self, one) is None) != (getattr(self, other) is None):
                raise ValueError(f"{one} and {other} go together: give both or neither")
        return self


class ShellDriverConfig(FleetModel):
    """Run a command per action; its exit code is the step's result."""

    kind: Literal["shell"]
    commands: ShellCommands
    timeout_s: float = Field(default=300, gt=0, le=86_400)
    # Characters of output kept; queries (version, in_flight, ...) are read from it too.
    output_limit: int = Field(default=4000, ge=200, le=1_000_000)


class HttpDriverConfig(FleetModel):
    """A load balancer's API (drain, undrain, in-flight, colours) and a host agent's (deploy).

    The paths are Drover's documented protocol; ``docs/drivers.md`` describes them.
    """

    kind: Literal["http"]
    load_balancer: str  # base URL, e.g. https://lb.example.internal/api
    agent: str  # per host, with {host}: e.g. http://{host}:9100
    flags: str | None = None  # base URL of the feature-flag service
    # The environment variable that holds a bearer token for all three, if they need one:
    # the token itself never appears in the fleet file, the timeline or the logs.
    token_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")
    timeout_s: float = Field(default=5, gt=0, le=300)
    # A deploy call returns when the host runs the new version, which takes longer.
    deploy_timeout_s: float = Field(default=600, gt=0, le=86_400)
    retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=0.2, ge=0, le=60)  # doubled after each try

    @field_validator("load_balancer", "agent", "flags")
    @classmethod
    def _urls(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        allowed = frozenset({"host"}) if info.field_name == "agent" else frozenset()
        return Placeholders.check(value, allowed).rstrip("/")


DriverConfig = Annotated[
    SimulatedDriverConfig | ShellDriverConfig | HttpDriverConfig, Field(discriminator="kind")
]
