"""What a rollout's verify steps and gates use, built from the fleet file for one service."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from orchestrator.fleet import EnvironmentConfig
from orchestrator.fleet.checks import GraphiteSource, MetricGate, MetricSource
from orchestrator.vocabulary import Step
from workers.verification.gates import GateResult, judge
from workers.verification.health import check_health
from workers.verification.metrics import GraphiteReader, MetricReader, SimulatedMetrics

__all__ = ["gate_judge", "host_checker"]


def host_checker(
    environment: EnvironmentConfig, environment_name: str, service: str
) -> Callable[[str, str], str]:
    """The service's health checks for one host and version (nothing when it has none)."""
    checks = environment.services[service].health
    if checks is None:
        return lambda host, version: ""
    return lambda host, version: check_health(
        checks, host=host, service=service, environment=environment_name, version=version
    )


def gate_judge(
    environment: EnvironmentConfig,
    environment_name: str,
    service: str,
    *,
    versions_now: Callable[[], Mapping[str, str]],
    versions_before: Mapping[str, str],
) -> Callable[
    [Sequence[MetricGate], Step, Mapping[str, Sequence[str]], datetime], Sequence[GateResult]
]:
    """Judges gates of the service against the environment's metric sources."""

    def judged(
        gates: Sequence[MetricGate],
        step: Step,
        groups: Mapping[str, Sequence[str]],
        since: datetime,
    ) -> Sequence[GateResult]:
        now = datetime.now(UTC)
        # A gate's judged window is the "canary" group; outside a canary analysis that
        # is every host the rollout moved.
        hosts = {"canary": groups.get("all", ()), **groups}
        hosts.setdefault("all", [h for g in groups.values() for h in g])
        return [
            judge(
                gate,
                _reader(
                    environment.metrics[gate.source], hosts, versions_now, versions_before, since
                ),
                environment=environment_name,
                service=service,
                deployed_at=since,
                now=now,
            )
            for gate in gates
        ]

    return judged


def _reader(
    source: MetricSource,
    groups: Mapping[str, Sequence[str]],
    versions_now: Callable[[], Mapping[str, str]],
    versions_before: Mapping[str, str],
    since: datetime,
) -> MetricReader:
    if isinstance(source, GraphiteSource):
        return GraphiteReader(source)
    return SimulatedMetrics(
        source,
        hosts_by_group=groups,
        versions_now=versions_now,
        versions_before=versions_before,
        changed_at=since,
    )
