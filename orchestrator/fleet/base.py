"""What every part of the fleet file shares: frozen models that refuse unknown keys, and
amounts of hosts given as a count or a percentage."""

from __future__ import annotations

import math
import re
from typing import Annotated, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["Amount", "FleetModel", "Placeholders", "PositiveAmount", "hosts_in"]


class FleetModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_PERCENT: Final = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")


def _amount(value: object, *, least: int) -> int | str:
    """A number of hosts (``2``) or a share of them (``"25%"``), refused if neither."""
    if isinstance(value, bool):  # YAML's yes/no are not amounts
        raise ValueError(f"{value!r} is not a number of hosts or a percentage")
    if isinstance(value, int):
        if value < least:
            raise ValueError(f"{value} hosts: must be {least} or more")
        return value
    if isinstance(value, str):
        match = _PERCENT.match(value.strip())
        share = float(match.group(1)) if match else -1.0
        if share <= 100 and (share > 0 or (share == 0 and least == 0)):
            return value.strip()
    raise ValueError(f"{value!r} is not a number of hosts (2) or a percentage of them ('25%')")


# How many hosts must stay in service (a floor: may be none), or may move at once (a
# batch, a canary step: at least one).
Amount = Annotated[int | str, BeforeValidator(lambda v: _amount(v, least=0))]
PositiveAmount = Annotated[int | str, BeforeValidator(lambda v: _amount(v, least=1))]


def hosts_in(amount: int | str, total: int, *, at_least_one: bool) -> int:
    """How many of ``total`` hosts ``amount`` means; a share is rounded up.

    Rounding up errs on the safe side both ways it is used: a healthy floor of "75%" of
    3 hosts keeps 3, not 2, and a batch of "10%" of 5 hosts moves 1, not 0.
    """
    if isinstance(amount, int):
        count = amount
    else:
        count = math.ceil(total * float(amount.rstrip("%")) / 100 - 1e-9)
    count = min(count, total)
    return max(count, 1) if at_least_one else count


class Placeholders:
    """The ``{name}`` fields a command or URL template may use, checked when the file is read."""

    _FIELD: Final = re.compile(r"\{([^{}]*)\}")

    @classmethod
    def check(cls, template: str, allowed: frozenset[str]) -> str:
        for name in cls._FIELD.findall(template):
            if name not in allowed:
                known = ", ".join("{" + a + "}" for a in sorted(allowed))
                raise ValueError(f"unknown placeholder {{{name}}} in {template!r} (known: {known})")
        return template

    @classmethod
    def fill(cls, template: str, values: dict[str, str]) -> str:
        # Not str.format: a template is data from a file, and format would also evaluate
        # attribute and index lookups ("{host.__class__}") written in it.
        return cls._FIELD.sub(lambda m: values[m.group(1)], template)
