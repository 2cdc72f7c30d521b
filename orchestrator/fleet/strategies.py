"""How a service's hosts move to a new version: rolling, canary or blue/green.

Given per service in the fleet file (``strategy:``); a release may give another one for
one of its components. The models here only describe; ``workers/strategies.py`` does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.fleet.base import Amount, FleetModel, PositiveAmount, hosts_in
from orchestrator.fleet.checks import MetricGate
from orchestrator.vocabulary import HostName

__all__ = [
    "BlueGreenStrategy",
    "CanaryAnalysis",
    "CanaryStep",
    "CanaryStrategy",
    "RollingStrategy",
    "Strategy",
]


class _Batches(FleetModel):
    """Batches of hosts that never take more hosts out of service than the floor allows."""

    batch: PositiveAmount = 1
    # Hosts that must be serving at every moment; a host being drained, deployed or
    # verified is not serving.
    min_healthy: Amount = 0
    # How long a drain waits for the host's in-flight requests to finish before it goes on.
    drain_timeout_s: float = Field(default=30, ge=0, le=3600)

    def floor(self, total: int) -> int:
        return hosts_in(self.min_healthy, total, at_least_one=False)

    def batch_size(self, total: int) -> int:
        """Hosts per batch: the batch asked for, made smaller if the floor needs it."""
        return min(hosts_in(self.batch, total, at_least_one=True), total - self.floor(total))

    def batches(self, hosts: tuple[str, ...]) -> list[tuple[str, ...]]:
        size = self.batch_size(len(hosts))
        return [hosts[i : i + size] for i in range(0, len(hosts), size)]


class RollingStrategy(_Batches):
    kind: Literal["rolling"]


class CanaryAnalysis(FleetModel):
    """Compare the canary hosts with the rest (the baseline) by these gates."""

    gates: tuple[MetricGate, ...] = Field(min_length=1)


class CanaryStep(FleetModel):
    """One step of a canary: exactly one of move hosts, wait, or analyse."""

    hosts: PositiveAmount | None = None  # hosts on the new version after this step, in all
    bake_s: float | None = Field(default=None, ge=0, le=86_400)
    analysis: CanaryAnalysis | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryStep:
        given = [k for k in ("hosts", "bake_s", "analysis") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a canary step is exactly one of hosts, bake_s or analysis"
                + (f" (this one has {' and '.join(given)})" if given else "")
            )
        return self


class CanaryStrategy(_Batches):
    """A few hosts first, a bake, an analysis, more hosts ...; then the rest in batches."""

    kind: Literal["canary"]
    steps: tuple[CanaryStep, ...] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _starts_with_hosts(cls, steps: tuple[CanaryStep, ...]) -> tuple[CanaryStep, ...]:
        if steps[0].hosts is None:
            raise ValueError("the first canary step must put some hosts on the new version")
        return steps


class BlueGreenStrategy(FleetModel):
    """Two colours of hosts; the idle one is deployed and verified, then traffic switches.

    The colour that served before stays as it was, so rolling back is a switch back.
    """

    kind: Literal["blue_green"]
    blue: tuple[HostName, ...] = Field(min_length=1)
    green: tuple[HostName, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _colours_apart(self) -> BlueGreenStrategy:
        shared = sorted(set(self.blue) & set(self.green))
        if shared:
            raise ValueError(f"hosts in both colours: {', '.join(shared)}")
        return self

    def colour(self, name: str) -> tuple[str, ...]:
        return self.blue if name == "blue" else self.green


Strategy = Annotated[
    RollingStrategy | CanaryStrategy | BlueGreenStrategy, Field(discriminator="kind")
]
