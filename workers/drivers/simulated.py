"""A fleet simulator: for the demo, tests, benchmarks and drills.

Host versions, drained hosts, the live colour and flags live in the store, so every
process (and ``drover fleet``) sees the same truth. Every effect, i.e. every change to a
host or a service (drained, deployed, undrained, switched, toggled), is counted per
(release, host or flag, step), so that a test can prove that nothing was done twice; doing again
what is already so (draining a drained host) changes nothing and counts nothing. A
verify is a check, not an effect. Latency, failures and in-flight requests come from the
fleet file.

The store also keeps the most hosts of a service ever out of service at once
(``PEAK_DRAINED``): the tests hold every strategy to its healthy floor by it. A change and
the count of its effect are one store call, so no crash leaves a change uncounted.

A fleet whose steps take no time is changed without waiting for each change: the store
records them in order, no later than the thread's next call on it (a worker's journal
entries and reports go with them, after them), and reads them as made at once. One whose
steps take time (or may fail) waits for each, so that every change is seen as it is
made. A worker's changes are made ``under`` its lease: the store refuses one that
reaches it after another worker took the lease.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from orchestrator.fleet.drivers import SimulatedDriverConfig
from orchestrator.store import Effect, Held, Pending, Store
from orchestrator.vocabulary import Step
from workers.drivers import Colour, Driver, StepError

__all__ = ["SimulatedDriver"]

_LIVE_COLOUR: Final = "live_colour"
_SERVICE: Final = "*"  # the "host" of an effect on the whole service


class SimulatedDriver(Driver):
    def __init__(
        self,
        config: SimulatedDriverConfig,
        store: Store,
        *,
        environment: str,
        service: str,
        release_id: str,
        rollback: bool,
        under: Held | None = None,
    ):
        self._config = config
        self._store = store
        self._environment = environment
        self._service = service
        self._release_id = release_id
        # Effects of a rollback are counted apart from those of the rollout they undo.
        self._prefix = "rollback." if rollback else ""
        self._under = under  # the lease its changes are made under, if a worker's
        # Whether a step takes time or may fail: if not, nothing is read before a change.
        self._acts = bool(config.latency_ms or config.fail)

    def current_version(self, host: str) -> str:
        return self.current_versions([host])[host]

    def current_versions(self, hosts: Sequence[str]) -> dict[str, str]:
        recorded = self._store.host_versions(self._environment, self._service)
        return {host: recorded.get(host, self._config.initial_version) for host in hosts}

    def drain(self, host: str) -> str:
        self._act(Step.DRAIN, host, version=None)
        effect = self._effect(Step.DRAIN, host)
        drained = self._store.set_drained(self._environment, self._service, host, True, effect)
        if not self._config.in_flight:
            self._made(drained)
        elif drained.wait():  # when its requests began to finish
            self._set(f"drained_at:{host}", repr(time.time()), effect=None)
        return ""

    def in_flight(self, host: str) -> int:
        """What a drained host still serves: its requests finish one per ``request_ms``."""
        if not self._config.in_flight:
            return 0  # a host that serves nothing has nothing to finish
        state = self._store.service_state(self._environment, self._service)
        drained_at = state.get(f"drained_at:{host}")
        drained = self._store.drained_hosts(self._environment, self._service)
        if drained_at is None or host not in drained:
            return self._config.in_flight
        if not self._config.request_ms:
            return 0
        finished = int((time.time() - float(drained_at)) * 1000 // self._config.request_ms)
        return max(0, self._config.in_flight - finished)

    def deploy(self, host: str, version: str) -> str:
        # A repeated deploy is recognised, not redone: it neither waits nor fails, and
        # the store counts no effect for a host already on the version.
        if self._acts and self.current_version(host) == version:
            return ""
        self._act(Step.DEPLOY, host, version)
        effect = self._effect(Step.DEPLOY, host)
        self._made(
            self._store.set_host_version(self._environment, self._service, host, version, effect)
        )
        return ""

    def verify(self, host: str, version: str) -> str:
        self._act(Step.VERIFY, host, version)
        return ""

    def undrain(self, host: str) -> str:
        self._act(Step.UNDRAIN, host, version=None)
        effect = self._effect(Step.UNDRAIN, host)
        self._made(self._store.set_drained(self._environment, self._service, host, False, effect))
        return ""

    def live_colour(self) -> Colour | None:
        colour = self._store.service_state(self._environment, self._service).get(_LIVE_COLOUR)
        return "blue" if colour == "blue" else "green" if colour == "green" else None

    def switch(self, colour: Colour) -> str:
        self._act(Step.SWITCH, _SERVICE, version=None)
        self._set(_LIVE_COLOUR, colour, self._effect(Step.SWITCH, _SERVICE))
        return f"{colour} takes the traffic"

    def flag(self, name: str) -> bool:
        return (
            self._store.service_state(self._environment, self._service).get(f"flag:{name}") == "on"
        )

    def set_flag(self, name: str, enabled: bool) -> str:
        self._act(Step.TOGGLE, _SERVICE, version=None)
        state = "on" if enabled else "off"
        # each flag's flips counted apart
        self._set(f"flag:{name}", state, self._effect(Step.TOGGLE, f"flag:{name}"))
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

    def _set(self, field: str, value: str, effect: Effect | None) -> None:
        self._made(
            self._store.set_service_state(self._environment, self._service, field, value, effect)
        )

    def _made(self, change: Pending[bool]) -> None:
        if self._acts:  # a fleet whose steps take time (or may fail) shows each as made
            change.wait()

    def _effect(self, step: Step, host: str) -> Effect:
        return Effect(self._release_id, host, self._prefix + step, self._under)
