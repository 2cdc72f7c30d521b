"""What every message shares: the payload base, problems, and the names a component has."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

__all__ = ["ComponentName", "Payload", "Problem"]

# A component is named after its service, or for a flag flip ``<service>.<flag>``: the dot
# cannot appear in a service name, so the two never clash.
ComponentName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}(\.[a-z0-9][a-z0-9_-]{0,62})?$"),
]


class Problem(BaseModel):
    """One reason an input was refused: where (a dotted field path) and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
