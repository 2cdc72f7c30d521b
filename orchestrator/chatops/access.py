"""May this person do this by chat? The fleet file's access rules, applied to one request.

Each refusal says which action, which services and who may, so the person knows whom to
ask. Separation of duties (an approver other than the requester) is the saga's concern,
not this module's.

Whoever calls ``allowed`` decides which names identify the actor. A chat user id cannot
be chosen by its user; in many workspaces a user name can, so an access list that names
people by user name trusts the chat server to keep names unique and stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from orchestrator.chatops.grammar import Command, Decide, Deploy, Lock, Unlock
from orchestrator.fleet.access import AccessGroups, EnvironmentAccess

__all__ = ["Action", "Verdict", "allowed", "required_action"]

Action: TypeAlias = Literal["deploy", "approve", "operate"]


@dataclass(frozen=True)
class Verdict:
    """Allowed, or refused with the reason and what it was refused for."""

    allowed: bool
    reason: str = ""  # why not; "" when allowed
    action: Action | None = None
    services: tuple[str, ...] = ()  # the services that may not be deployed
    who_may: tuple[str, ...] = ()  # the principals that may (for one service: that one's)

    def __bool__(self) -> bool:
        return self.allowed


_ALLOWED = Verdict(allowed=True)


def required_action(command: Command) -> Action | None:
    """What a command needs leave to do; None for a command that only reads."""
    if isinstance(command, Deploy):
        return None if command.dry_run else "deploy"
    if isinstance(command, Decide):
        return "approve" if command.kind in ("approve", "reject") else "operate"
    if isinstance(command, Lock | Unlock):
        return "operate"
    return None


def allowed(
    groups: AccessGroups,
    environment: EnvironmentAccess | None,
    *,
    actor_names: Sequence[str],
    action: Action,
    services: Sequence[str] = (),
) -> Verdict:
    """May someone known by any of ``actor_names`` (a user id, a user name) do ``action``?

    ``services`` are those a deploy touches: each must be allowed, by its own entry or
    else by "*".
    """
    if environment is None:
        return Verdict(
            False,
            f"this environment has no `access` in the fleet file, so nobody may {action}"
            " here by chat",
            action,
        )
    actor = frozenset(actor_names)
    if not actor:
        return Verdict(False, "the request names no user", action)
    if action == "deploy":
        return _deploy_verdict(groups, environment, actor, services)
    principals = environment.approve if action == "approve" else environment.operate
    if _admits(groups, principals, actor):
        return _ALLOWED
    reason = f"you may not {action} here; {_who_may(principals)}"
    return Verdict(False, reason, action, who_may=principals)


def _deploy_verdict(
    groups: AccessGroups,
    environment: EnvironmentAccess,
    actor: frozenset[str],
    services: Sequence[str],
) -> Verdict:
    if not services:
        return Verdict(False, "a deploy names no service", "deploy")
    refused = [s for s in dict.fromkeys(services) if not _may_deploy(groups, environment, actor, s)]
    if not refused:
        return _ALLOWED
    reasons = "; ".join(f"{s}: {_who_may(environment.deployers(s))}" for s in refused)
    return Verdict(
        False,
        f"you may not deploy {', '.join(refused)} here ({reasons})",
        "deploy",
        services=tuple(refused),
        who_may=environment.deployers(refused[0]) if len(refused) == 1 else (),
    )


def _may_deploy(
    groups: AccessGroups, environment: EnvironmentAccess, actor: frozenset[str], service: str
) -> bool:
    return _admits(groups, environment.deployers(service), actor)


def _admits(groups: AccessGroups, principals: Sequence[str], actor: frozenset[str]) -> bool:
    return any(actor & groups.members(principal) for principal in principals)


def _who_may(principals: Sequence[str]) -> str:
    return f"only {', '.join(principals)} may" if principals else "nobody may"
