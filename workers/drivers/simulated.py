"""A fleet simulator: for the demo, tests, benchmarks and drills.

Host versions, drained hosts, the live colour and flags live in the store, so every
process (and ``drover fleet``) sees the same truth. Every effect, i.e. every change to a
host or a service (drained, deployed, undrained, switched, toggled), is counted per
(release, host or flag, step), so that a test can prove that nothing was done twice; doing again
what is already so (draining a drained host) changes nothing and counts nothing. A
verify is a check, not an effect. Latency, failures and in-flight requests come from the
fleet file.

The simulator also keeps the most hosts of a service it ever had out of service at once
(``peak_drained``): the tests hold every strategy to its healthy floor by it.
"""

from __future__ import annotations

import time
from typing import Final

from orchestrator.fleet.drivers import SimulatedDriverConfig
from orchestrator.store import Store
from orchestrator.vocabulary import Step
from workers.drivers import Colour, StepError

__all__ = ["PEAK_DRAINED", "SimulatedDriver"]

PEAK_DRAINED: Final = "peak_drained"
_LIVE_COLOUR: Final = "live_colour"
_SERVICE: Final = "*"  # the "host" of an effect on the whole service


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

    def drain(self, host: str) -> str:
        self._act(Step.DRAIN, host, version=None)
        if self._store.set_drained(self._environment, self._service, host, drained=True):
            if self._config.in_flight:  # when its requests began to finish
                self._set(f"drained_at:{host}", repr(time.time()))
            self._count(Step.DRAIN, host)
            self._note_peak()
        return ""

    def in_flight(self, host: str) -> int:
        """What a drained host still serves: its requests finish one per ``request_ms``."""
        if not self._config.in_flight:
            return 0  # a host that serves nothing has nothing to finish
        state = self._store.service_state(self._environment, self._service)
        drained_at = state.get(f"drained_at:{host}")
        if drained_at is None or host not in self._drained():
            return self._config.in_flight
        if not self._config.request_ms:
            return 0
        finished = int((time.time() - float(drained_at)) * 1000 // self._config.request_ms)
        return max(0, self._config.in_flight - finished)

    def deploy(self, host: str, version: str) -> str:
        if self.current_version(host) == version:
            return ""  # already there: a repeated deploy is recognised, not redone
        self._act(Step.DEPLOY, host, version)
        self._store.record_host_version(self._environment, self._service, host, version)
        self._count(Step.DEPLOY, host)
        return ""

    def verify(self, host: str, version: str) -> str:
        self._act(Step.VERIFY, host, version)
        return ""

    def undrain(self, host: str) -> str:
        self._act(Step.UNDRAIN, host, version=None)
        if self._store.set_drained(self._environment, self._service, host, drained=False):
            self._count(Step.UNDRAIN, host)
        return ""

    def live_colour(self) -> Colour | None:
        colour = self._store.service_state(self._environment, self._service).get(_LIVE_COLOUR)
        return "blue" if colour == "blue" else "green" if colour == "green" else None

    def switch(self, colour: Colour) -> str:
        self._act(Step.SWITCH, _SERVICE, version=None)
        if self._set(_LIVE_COLOUR, colour):
            self._count(Step.SWITCH, _SERVICE)
        return f"{colour} takes the traffic"

    def flag(self, name: str) -> bool:
        return (
            self._store.service_state(self._environment, self._service).get(f"flag:{name}") == "on"
        )

    def set_flag(self, name: str, enabled: bool) -> str:
        self._act(Step.TOGGLE, _SERVICE, version=None)
        state = "on" if enabled else "off"
        if self._set(f"flag:{name}", state):
            self._count(Step.TOGGLE, f"flag:{name}")  # each flag's flips counted apart
        return f"{name} is {state}"

    def _act(self, step: Step, host: str, version: str | None) -> None:
        """The simulated work: its latency, and the failures the fleet file injects."""
        if self._config.latency_ms:
            time.sleep(self._config.latency_ms / 1000)
        if not self._config.fail:
            return
        running = version or (self.current_version(host) if host != _SERVICE else "")
        for injection in self._config.fail:
            if not injection.matches(step, running, host):
                continue
            if injection.stall_ms is None:
                where = "" if host == _SERVICE else host
                what = f"{step} of {running}" if running else str(step)
                raise StepError(step, where, f"injected failure ({what})")
            time.sleep(injection.stall_ms / 1000)

    def _drained(self) -> set[str]:
        return self._store.drained_hosts(self._environment, self._service)

    def _note_peak(self) -> None:
        # One worker holds a service at a time (its lease), so read-then-write is safe.
        out = len(self._drained())
        peak = int(self._store.service_state(self._environment, self._service).get(PEAK_DRAINED, 0))
        if out > peak:
            self._set(PEAK_DRAINED, str(out))

    def _set(self, field: str, value: str) -> bool:
        return self._store.set_service_state(self._environment, self._service, field, value)

    def _count(self, step: Step, host: str) -> None:
        self._store.count_effect(
            self._release_id, self._environment, self._service, host, self._prefix + step
        )
