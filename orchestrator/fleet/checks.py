"""How Drover knows a deploy is good: health checks per host and metric gates.

A health check asks one host (an HTTP call, or a command's exit code) and runs in the
verify step of every batch. A metric gate reads a metric source (Graphite's render API,
or the simulated fleet's own metrics) and gives a verdict: pass, inconclusive (too few
data points to say) or fail.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.fleet.base import FleetModel, Placeholders
from orchestrator.vocabulary import Name, Version

__all__ = [
    "CommandCheck",
    "GraphiteSource",
    "HealthCheck",
    "HealthChecks",
    "HttpCheck",
    "MetricGate",
    "MetricSource",
    "SimulatedMetric",
    "SimulatedSource",
]

HOST_FIELDS: Final = frozenset({"host", "service", "environment", "version"})
GATE_FIELDS: Final = frozenset({"service", "environment", "group"})


def _url(value: str, allowed: frozenset[str]) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return Placeholders.check(value, allowed)


class HttpCheck(FleetModel):
    """Healthy when a GET of ``url`` answers with one of ``status`` (and ``body`` in it)."""

    kind: Literal["http"]
    url: str
    status: tuple[int, ...] = (200,)
    body: str | None = None  # text the answer must contain
    timeout_s: float = Field(default=2, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _url(value, HOST_FIELDS)


class CommandCheck(FleetModel):
    """Healthy when the command exits 0. Arguments are a list: no shell reads them."""

    kind: Literal["command"]
    argv: tuple[str, ...] = Field(min_length=1)
    timeout_s: float = Field(default=10, gt=0, le=3600)

    @field_validator("argv")
    @classmethod
    def _placeholders(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(Placeholders.check(a, HOST_FIELDS) for a in argv)


HealthCheck = Annotated[HttpCheck | CommandCheck, Field(discriminator="kind")]


class HealthChecks(FleetModel):
    """Every check must pass on a host for its verify step to succeed."""

    checks: tuple[HealthCheck, ...] = Field(min_length=1)
    settle_s: float = Field(default=0, ge=0, le=3600)  # wait after deploy before asking
    retries: int = Field(default=3, ge=0, le=100)  # more tries for a check that failed
    interval_s: float = Field(default=1, ge=0, le=600)  # between tries


class GraphiteSource(FleetModel):
    """Graphite's render API (``/render?target=…&format=json``), as StatsD users have."""

    kind: Literal["graphite"]
    url: str
    timeout_s: float = Field(default=5, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _url(value, frozenset()).rstrip("/")


class SimulatedMetric(FleetModel):
    """A metric each simulated host reports: ``value``, or another for some versions."""

    value: float
    by_version: dict[Version, float] = Field(default_factory=dict)


class SimulatedSource(FleetModel):
    """The simulated fleet's own metrics: a target is a metric name here."""

    kind: Literal["simulated"]
    metrics: dict[Name, SimulatedMetric] = Field(min_length=1)


MetricSource = Annotated[GraphiteSource | SimulatedSource, Field(discriminator="kind")]


class MetricGate(FleetModel):
    """A threshold on a metric over a window; every threshold given must hold.

    * ``max`` / ``min``: on the window's value (error rate, latency, ...);
    * ``min_ratio_to_before``: the window after the deploy against the same length of
      time before it: a business signal that flat-lines (checkouts per minute falling
      to nothing) fails here;
    * ``max_ratio_to_baseline``: in a canary analysis, the canary hosts (``{group}`` is
      ``canary``) against the others (``baseline``).
    """

    name: Name
    source: Name  # one of the environment's ``metrics``
    target: str = Field(min_length=1, max_length=2000)
    window_s: float = Field(default=300, gt=0, le=7 * 86_400)
    aggregate: Literal["avg", "sum", "min", "max", "last"] = "avg"
    min_points: int = Field(default=1, ge=1)  # fewer points than this: inconclusive
    max: float | None = None
    min: float | None = None
    min_ratio_to_before: float | None = Field(default=None, gt=0)
    max_ratio_to_baseline: float | None = Field(default=None, gt=0)

    @field_validator("target")
    @classmethod
    def _placeholders(cls, target: str) -> str:
        return Placeholders.check(target, GATE_FIELDS)

    @model_validator(mode="after")
    def _has_threshold(self) -> MetricGate:
        thresholds = (self.max, self.min, self.min_ratio_to_before, self.max_ratio_to_baseline)
        if all(t is None for t in thresholds):
            raise ValueError(
                f"gate {self.name!r} has no threshold: give max, min,"
                " min_ratio_to_before or max_ratio_to_baseline"
            )
        return self
