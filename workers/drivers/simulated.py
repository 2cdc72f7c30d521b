"""A fleet simulator: for the demo, tests, benchmarks and drills.

Host versions and drained hosts live in the store, so every process (and ``drover
fleet``) sees the same truth. Every effect, i.e. every change to a host (drained, deployed,
undrained), is counted per (release, host, step), so that a test can prove that nothing
was done twice; doing again what is already so (draining a drained host) changes nothing
and counts nothing. A verify is a check, not an effect. Latency and failures come from
the fleet file.
"""

from __future__ import annotations

import time

from orchestrator.contract import Step
from orchestrator.plans import SimulatedDriverConfig
from orchestrator.store import Store
from workers.drivers import StepError

__all__ = ["SimulatedDriver"]


class SimulatedDriver:
    def __init__(
        self,
        config: SimulatedDriverConfig,
        store: Store,
        *,
        environment: str,
        service: str,
        release_id: str,
        rollback: bool,
    ):
        self._config = config
        self._store = store
        self._environment = environment
        self._service = service
        self._release_id = release_id
        # Effects of a rollback are counted apart from those of the rollout they undo.
        self._prefix = "rollback." if rollback else ""

    def current_version(self, host: str) -> str:
        recorded = self._store.host_versions(self._environment, self._service)
        return recorded.get(host, self._config.initial_version)

    def drain(self, host: str) -> None:
        self._act(Step.DRAIN, host, version=None)
        if self._store.set_drained(self._environment, self._service, host, drained=True):
            self._count(Step.DRAIN, host)

    def deploy(self, host: str, version: str) -> None:
        if self.current_version(host) == version:
            return  # already there: a repeated deploy is recognised, not redone
        self._act(Step.DEPLOY, host, version)
        self._store.record_host_version(self._environment, self._service, host, version)
        self._count(Step.DEPLOY, host)

    def verify(self, host: str, version: str) -> None:
        self._act(Step.VERIFY, host, version)

    def undrain(self, host: str) -> None:
        self._act(Step.UNDRAIN, host, version=None)
        if self._store.set_drained(self._environment, self._service, host, drained=False):
            self._count(Step.UNDRAIN, host)

    def _act(self, step: Step, host: str, version: str | None) -> None:
        """The simulated work: its latency, and the failures the fleet file injects."""
        if self._config.latency_ms:
            time.sleep(self._config.latency_ms / 1000)
        running = version or self.current_version(host)
        for injection in self._config.fail:
            if not injection.matches(step, running, host):
                continue
            if injection.stall_ms is None:
                raise StepError(step, host, f"injected failure ({step} of {running})")
            time.sleep(injection.stall_ms / 1000)

    def _count(self, step: Step, host: str) -> None:
        self._store.count_effect(
            self._release_id, self._environment, self._service, host, self._prefix + step
        )
