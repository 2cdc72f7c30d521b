"""Drivers: how a service's hosts are drained, deployed, verified and undrained.

A driver knows hosts and versions and nothing of releases or sagas. Every operation is
declarative ("host H runs version V", "host H is drained", "green takes the traffic"),
so doing it again after a crash is harmless. Operations that act return the text they
produced (a command's output, an API's answer), which goes into the release timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from orchestrator.vocabulary import Step

__all__ = ["Colour", "Driver", "StepError"]

Colour = Literal["blue", "green"]


class StepError(Exception):
    """A step did not succeed on a host; the component must stop and put itself back.

    ``host`` is "" when the step concerns the whole service (a traffic switch, a flag).
    """

    def __init__(self, step: Step, host: str, reason: str, output: str = ""):
        self.step = step
        self.host = host
        self.reason = reason
        self.output = output
        super().__init__(f"{step} on {host}: {reason}" if host else f"{step}: {reason}")


class Driver(Protocol):
    """Every operation raises :class:`StepError` (naming the step it served) on failure."""

    def current_version(self, host: str) -> str: ...

    def current_versions(self, hosts: Sequence[str]) -> dict[str, str]:
        """What each of ``hosts`` runs: one question per host, unless the driver can ask
        for them together (the simulator: one read, not one per host)."""
        return {host: self.current_version(host) for host in hosts}

    def drain(self, host: str) -> str: ...

    def in_flight(self, host: str) -> int:
        """Requests the host is still serving (0 when the driver cannot tell)."""
        ...

    def deploy(self, host: str, version: str) -> str: ...

    def verify(self, host: str, version: str) -> str: ...

    def undrain(self, host: str) -> str: ...

    def live_colour(self) -> Colour | None:
        """Which colour takes the traffic; None before blue/green was ever used."""
        ...

    def switch(self, colour: Colour) -> str: ...

    def flag(self, name: str) -> bool: ...

    def set_flag(self, name: str, enabled: bool) -> str: ...
