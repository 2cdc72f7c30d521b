"""The words every part of Drover shares: names, host names, versions and steps.

Names end up in queue names, store keys, metric names and command arguments, so they are
held to strict patterns here, once, rather than escaped everywhere later.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import StringConstraints

__all__ = ["NAME_PATTERN", "HostName", "Name", "Step", "Version"]

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]


class Step(StrEnum):
    """What a worker does: to one batch of hosts, or to the component as a whole."""

    # A batch of hosts, in this order.
    DRAIN = "drain"
    DEPLOY = "deploy"
    VERIFY = "verify"
    UNDRAIN = "undrain"
    # The component as a whole.
    BAKE = "bake"  # a canary waits while its hosts serve
    ANALYSE = "analyse"  # a canary's metrics against the baseline's
    GATE = "gate"  # the component's metric gates, once every host is deployed
    SWITCH = "switch"  # blue/green: traffic moves to the other colour
    TOGGLE = "toggle"  # a feature flag is turned on or off
