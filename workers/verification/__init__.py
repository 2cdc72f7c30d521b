"""Verification: is a deployed version healthy on its hosts, and good by its metrics?

* :func:`check_health`: a host's health checks, for the verify step of every batch;
* :class:`GraphiteReader`, :class:`SimulatedMetrics`: where a gate's metric is read;
* :func:`judge`, :func:`overall`: a metric gate's verdict, and the verdict of several.
"""

from __future__ import annotations

from workers.verification.gates import GateResult, Verdict, judge, overall
from workers.verification.health import check_health
from workers.verification.metrics import (
    GraphiteReader,
    MetricReader,
    MetricsUnavailable,
    SimulatedMetrics,
)

__all__ = [
    "GateResult",
    "GraphiteReader",
    "MetricReader",
    "MetricsUnavailable",
    "SimulatedMetrics",
    "Verdict",
    "check_health",
    "judge",
    "overall",
]
