"""``drover watch``'s view of a release, drawn from its state, timeline and fleet."""

from __future__ import annotations

from orchestrator.contract import GateJudged, Step, StepFailed, StepStarted, StepSucceeded
from orchestrator.watching import watch_lines
from tests.unit.builders import ENVIRONMENT, HOSTS, Release, component, deployed, event, failed


def step(kind: type, service: str, step: Step, batch: int = 1, **extra: object) -> object:
    return kind(
        environment=ENVIRONMENT, service=service, step=step, batch=batch, hosts=HOSTS, **extra
    )


def test_each_component_shows_its_strategy_batches_hosts_and_gates() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    timeline = [
        event(step(StepSucceeded, "db", Step.VERIFY, duration_ms=1)),  # type: ignore[arg-type]
        event(step(StepSucceeded, "db", Step.UNDRAIN, duration_ms=1)),  # type: ignore[arg-type]
        event(step(StepStarted, "api", Step.DEPLOY)),  # type: ignore[arg-type]
        event(
            GateJudged(
                environment=ENVIRONMENT,
                service="api",
                step=Step.ANALYSE,
                gate="errors",
                verdict="pass",
                inputs={},
                thresholds={},
                reason="fine",
            )
        ),
    ]

    lines = watch_lines(release.release, timeline, release.fleet)

    assert lines[0] == "R-1 prod: running · 1 of 2 components deployed"
    db = " ".join(lines[1].split())
    assert db == "db 2.0.0 rolling deployed · batch 1 of 2 done · 2/2 hosts · undrain batch 1 done"
    assert "api" in lines[2] and "deploying" in lines[2]
    assert "deploy batch 1 under way" in lines[2] and "errors: pass" in lines[2]


def test_a_failure_stays_in_view_while_its_hosts_are_put_back_and_compensations_show() -> None:
    release = Release(component("db"), component("api", "db"))
    release.send(deployed("db"))
    release.send(failed("api"))
    timeline = [
        event(step(StepFailed, "api", Step.VERIFY, host="h1", reason="unhealthy")),  # type: ignore[arg-type]
        event(step(StepSucceeded, "api", Step.DEPLOY, rollback=True, duration_ms=1)),  # type: ignore[arg-type]
    ]

    lines = watch_lines(release.release, timeline, release.fleet)

    assert "compensating" in lines[0]
    api = next(line for line in lines if line.strip().startswith("api"))
    assert "verify batch 1 FAILED: unhealthy" in api and "putting back: deploy" in api
    assert lines[-1] == "  compensations: pending db; done -"
