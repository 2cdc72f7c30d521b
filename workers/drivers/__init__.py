"""Drivers: how a service's hosts are drained, deployed, verified and undrained.

A driver knows hosts and versions and nothing of releases or sagas. Every operation is
declarative ("host H runs version V", "host H is drained"), so doing it again after a
crash is harmless.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.contract import Step

__all__ = ["Driver", "StepError"]


class StepError(Exception):
    """A step did not succeed on a host; the component must stop and put itself back."""

    def __init__(self, step: Step, host: str, reason: str):
        self.step = step
        self.host = host
        self.reason = reason
        super().__init__(f"{step} on {host}: {reason}")


class Driver(Protocol):
    def current_version(self, host: str) -> str: ...

    def drain(self, host: str) -> None: ...

    def deploy(self, host: str, version: str) -> None: ...

    def verify(self, host: str, version: str) -> None: ...

    def undrain(self, host: str) -> None: ...
