"""Who may do what by chat: groups of people, and per environment who may deploy (per
service), approve and operate.

Secure by default: an environment without an ``access`` section lets nobody deploy,
approve or operate by chat. Reading (status, queues, where, plan, help) needs nothing.

.. code-block:: yaml

    access:
      groups:
        release-managers: [U2CERLKJA, roadrunner]
        payments-team: [wile, U0G9QF9C6]
    environments:
      prod:
        access:
          deploy:
            "*": [release-managers]           # any service without its own entry
            payments: [payments-team, alice]  # instead of "*", not as well
          approve: [release-managers]
          operate: [release-managers, payments-team]
        services: ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final

from pydantic import Field, StringConstraints, field_validator

from orchestrator.fleet.base import FleetModel

__all__ = ["ANY_SERVICE", "AccessGroups", "EnvironmentAccess", "Principal", "access_problem"]

# A chat user's name or id (Slack's are like "U2CERLKJA"), or the name of a group.
Principal = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
ANY_SERVICE: Final = "*"
_DeployKey = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$")]


class AccessGroups(FleetModel):
    """The fleet file's top-level ``access``: named groups of chat users."""

    groups: dict[Principal, tuple[Principal, ...]] = Field(default_factory=dict)

    @field_validator("groups")
    @classmethod
    def _groups_do_not_nest(cls, groups: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        # A member is a person; were it a group too, who is in it would depend on reading
        # order, and a user who happens to share a group's name would be let in.
        for name, members in groups.items():
            nested = sorted(set(members) & set(groups))
            if nested:
                raise ValueError(
                    f"group {name!r} lists the group(s) {', '.join(nested)}: groups do not nest,"
                    " list their members instead"
                )
        return groups

    def members(self, principal: str) -> frozenset[str]:
        """Who a principal stands for: a group's members, or else the principal alone.

        A group's name stands for its members only, never also for a user of that name.
        """
        members = self.groups.get(principal)
        return frozenset(members) if members is not None else frozenset({principal})


class EnvironmentAccess(FleetModel):
    """An environment's ``access``: who may deploy which service, approve, and operate."""

    # Per service, or "*" for any service without its own entry.
    deploy: dict[_DeployKey, tuple[Principal, ...]] = Field(default_factory=dict)
    approve: tuple[Principal, ...] = ()  # approve and reject
    operate: tuple[Principal, ...] = ()  # abort, pause, resume, retry, lock and unlock

    def deployers(self, service: str) -> tuple[str, ...]:
        """Who may deploy ``service``: its own entry, else the "*" entry, else nobody."""
        if service in self.deploy:
            return self.deploy[service]
        return self.deploy.get(ANY_SERVICE, ())


def access_problem(access: EnvironmentAccess, services: Iterable[str]) -> str:
    """Why this access cannot belong to an environment with these services; "" if it can.

    For the environment's own validator: a deploy entry for a service the environment
    does not have is a typo that would otherwise quietly fall back to "*".
    """
    known = set(services)
    unknown = sorted(key for key in access.deploy if key != ANY_SERVICE and key not in known)
    if unknown:
        return f"access.deploy names unknown service(s): {', '.join(unknown)}"
    return ""
