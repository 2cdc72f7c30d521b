"""Metric gates: is the new version as good as the fleet file demands, by its metrics?

A gate reads its target over the deploy's window and gives a verdict:

* ``fail``: a threshold is broken; the component puts itself back;
* ``inconclusive``: the gate cannot say (too few points, nothing to compare with, the
  source is down); a person decides, as nothing here may pass a release it did not see;
* ``pass``: every threshold holds.

A broken threshold wins over a missing reading: a known failure is reason enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from math import fsum
from typing import Final, Literal

from orchestrator.fleet.base import Placeholders
from orchestrator.fleet.checks import MetricGate
from workers.verification.metrics import MetricReader, MetricsUnavailable

__all__ = ["GateResult", "Verdict", "judge", "overall"]

Verdict = Literal["pass", "inconclusive", "fail"]
Inputs = dict[str, float | int | None]


@dataclass(frozen=True)
class GateResult:
    """A gate's verdict and what it rested on; plain values only, for the timeline's JSON."""

    gate: str
    verdict: Verdict
    inputs: Inputs  # every value read: value, before, baseline, their points, the ratios
    thresholds: dict[str, float]  # the thresholds applied, by the fleet file's names
    reason: str  # one sentence for a person


@dataclass
class _Findings:
    """What judging one gate has found so far."""

    inputs: Inputs = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


_AGGREGATES: Final[dict[str, Callable[[list[float]], float]]] = {
    "avg": lambda points: fsum(points) / len(points),
    "sum": fsum,
    "min": min,
    "max": max,
    "last": lambda points: points[-1],
}

# What each window read is called in a reason.
_WINDOWS: Final = {
    "value": "window since the deploy",
    "before": "window before the deploy",
    "baseline": "baseline's window",
}


def judge(
    gate: MetricGate,
    reader: MetricReader,
    *,
    environment: str,
    service: str,
    deployed_at: datetime,
    now: datetime,
) -> GateResult:
    """Judge ``gate`` over the last ``window_s`` before ``now``.

    The window never reaches back before ``deployed_at``: minutes of the old version
    would water down what the new one did, and a gate judged too early would pass on
    the old version's figures. Judged too soon after the deploy, the window is shorter
    and may hold too few points: inconclusive, which is the truth.
    """
    judging = _Judging(gate, reader, {"service": service, "environment": environment})
    start = max(now - timedelta(seconds=gate.window_s), deployed_at)
    length = now - start
    judging.found.inputs["window_s"] = max(length.total_seconds(), 0.0)
    if length <= timedelta(0):
        judging.found.unsure.append("it was judged no later than the deploy: no window yet")
        return _result(gate, judging.found)
    value = judging.measure("value", "canary", start, now)
    if value is not None:
        judging.check_bounds(value)
        judging.check_before(value, deployed_at - length, deployed_at)
        judging.check_baseline(value, start, now)
    return _result(gate, judging.found)


def overall(results: Sequence[GateResult]) -> Verdict:
    """Fail beats inconclusive beats pass; no gates at all is a pass."""
    verdicts = {r.verdict for r in results}
    if "fail" in verdicts:
        return "fail"
    return "inconclusive" if "inconclusive" in verdicts else "pass"


class _Judging:
    """One gate being judged: its reads, and each threshold's finding."""

    def __init__(self, gate: MetricGate, reader: MetricReader, values: dict[str, str]) -> None:
        self.gate = gate
        self.reader = reader
        self.values = values  # the placeholders but {group}, which depends on the read
        self.found = _Findings()

    def measure(self, name: str, group: str, start: datetime, end: datetime) -> float | None:
        """Read one window into ``inputs[name]``; None when it gives nothing to judge."""
        gate, inputs = self.gate, self.found.inputs
        points_key = "points" if name == "value" else f"{name}_points"
        inputs[name] = inputs[points_key] = None  # until read
        target = Placeholders.fill(gate.target, {**self.values, "group": group})
        try:
            points = self.reader.read(target, start, end)
        except MetricsUnavailable as exc:
            self.found.unsure.append(f"the {_WINDOWS[name]} could not be read ({exc})")
            return None
        inputs[points_key] = len(points)
        if len(points) < gate.min_points:
            self.found.unsure.append(
                f"the {_WINDOWS[name]} has {len(points)} point(s), fewer than the"
                f" {gate.min_points} needed"
            )
            return None
        value = _AGGREGATES[gate.aggregate](points)
        inputs[name] = value
        return value

    def check_bounds(self, value: float) -> None:
        gate, found = self.gate, self.found
        shown = f"{gate.aggregate} {_n(value)}"
        if gate.max is not None:
            if value > gate.max:
                found.failed.append(f"{shown} is above the max of {_n(gate.max)}")
            else:
                found.held.append(f"{shown} is at most the max of {_n(gate.max)}")
        if gate.min is not None:
            if value < gate.min:
                found.failed.append(f"{shown} is below the min of {_n(gate.min)}")
            else:
                found.held.append(f"{shown} is at least the min of {_n(gate.min)}")

    def check_before(self, value: float, start: datetime, end: datetime) -> None:
        """After against the same length of time before: a flat-lined signal fails here."""
        least, found = self.gate.min_ratio_to_before, self.found
        if least is None:
            return
        before = self.measure("before", "canary", start, end)
        if before is None:
            return
        if before <= 0:
            # Nothing to fall from: a ratio to zero says nothing either way.
            found.unsure.append(f"it was {_n(before)} before the deploy: no ratio to that")
            return
        ratio = value / before
        found.inputs["ratio_to_before"] = ratio
        compared = f"{_n(value)} after against {_n(before)} before (ratio {_n(ratio)})"
        if ratio < least:
            found.failed.append(f"{compared} is below the min ratio of {_n(least)}")
        else:
            found.held.append(f"{compared} reaches the min ratio of {_n(least)}")

    def check_baseline(self, value: float, start: datetime, end: datetime) -> None:
        """The canary hosts against the others, over the same window."""
        most, found = self.gate.max_ratio_to_baseline, self.found
        if most is None:
            return
        baseline = self.measure("baseline", "baseline", start, end)
        if baseline is None:
            return
        compared = f"canary {_n(value)} against baseline {_n(baseline)}"
        if baseline == 0:
            # No ratio to zero; but the canary having what the baseline has none of is worse.
            if value > 0:
                found.failed.append(f"{compared}: the baseline has none of it")
            else:
                found.held.append(f"{compared}: neither has any")
            return
        if baseline < 0:
            found.unsure.append(f"the baseline is {_n(baseline)}: a ratio to it means nothing")
            return
        ratio = value / baseline
        found.inputs["ratio_to_baseline"] = ratio
        if ratio > most:
            found.failed.append(f"{compared} (ratio {_n(ratio)}) is above the max of {_n(most)}")
        else:
            found.held.append(f"{compared} (ratio {_n(ratio)}) is within the max of {_n(most)}")


def _thresholds(gate: MetricGate) -> dict[str, float]:
    given = {
        "max": gate.max,
        "min": gate.min,
        "min_ratio_to_before": gate.min_ratio_to_before,
        "max_ratio_to_baseline": gate.max_ratio_to_baseline,
    }
    applied = {name: limit for name, limit in given.items() if limit is not None}
    return {**applied, "min_points": gate.min_points}


def _result(gate: MetricGate, found: _Findings) -> GateResult:
    if found.failed:
        verdict: Verdict = "fail"
        reason = f"gate {gate.name} fails: " + "; ".join(found.failed)
        if found.unsure:
            reason += "; and besides, " + "; ".join(found.unsure)
    elif found.unsure:
        verdict = "inconclusive"
        reason = f"gate {gate.name} is inconclusive: " + "; ".join(found.unsure)
    else:
        verdict = "pass"
        reason = f"gate {gate.name} passes: " + "; ".join(found.held)
    return GateResult(gate.name, verdict, found.inputs, _thresholds(gate), reason + ".")


def _n(number: float) -> str:
    """A number as a person reads it: no float noise, no trailing ".0"."""
    return f"{number:.6g}"
