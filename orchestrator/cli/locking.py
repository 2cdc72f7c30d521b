"""``drover lock``, ``drover unlock`` and ``drover locks``: a service held by a person."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

import click

from orchestrator.cli.common import (
    _JSON_OPTION,
    _Abort,
    _actor,
    _emit,
    _fleet,
    _settings,
    _store,
    cli,
)
from orchestrator.manual_locks import (
    LockHeld,
    ManualLock,
    NotLocked,
    NotYours,
    current,
    history,
    lock,
    unlock,
)
from orchestrator.vocabulary import NAME_PATTERN

__all__ = ["lock_command", "locks", "unlock_command"]

_DURATION: Final = re.compile(r"^(\d{1,6})([smhd])$")
_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_ACTOR_OPTION = click.option("--actor", default=None, help="Who (default: the login name).")


def _where(target: str) -> tuple[str, str]:
    environment, _, service = target.partition("/")
    if not (re.match(NAME_PATTERN, environment) and re.match(NAME_PATTERN, service)):
        raise _Abort(f"{target!r}: expected ENVIRONMENT/SERVICE, e.g. prod/payments")
    return environment, service


def _duration_s(text: str | None) -> float | None:
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if match is None:
        raise _Abort(f"--for {text!r}: expected a number and s, m, h or d, e.g. 2h")
    return int(match.group(1)) * _SECONDS[match.group(2)]


@cli.command("lock")
@click.argument("target", metavar="ENVIRONMENT/SERVICE")
@click.option("--reason", required=True, help="Why, for whoever finds it locked.")
@click.option(
    "--for", "for_", default=None, help="How long: 30m, 2h, 1d (default: until unlocked)."
)
@_ACTOR_OPTION
def lock_command(target: str, reason: str, for_: str | None, actor: str | None) -> None:
    """Hold a service: releases that need it wait (a running one finishes first)."""
    environment, service = _where(target)
    settings = _settings()
    if settings.fleet is not None:  # with a fleet file at hand, a typo is caught here
        known = _fleet(settings).environments.get(environment)
        if known is None or service not in known.services:
            raise _Abort(f"{target}: not a service of the fleet file")
    with _store(settings) as store:
        try:
            taken = lock(
                store,
                environment,
                service,
                owner=actor or _actor(),
                reason=reason,
                for_s=_duration_s(for_),
                now=datetime.now(UTC),
            )
        except LockHeld as held:
            raise _Abort(str(held)) from held
    click.echo(f"locked {_describe(taken)}")


@cli.command("unlock")
@click.argument("target", metavar="ENVIRONMENT/SERVICE")
@click.option("--force", is_flag=True, help="Unlock another's lock (recorded as such).")
@_ACTOR_OPTION
def unlock_command(target: str, force: bool, actor: str | None) -> None:
    """Let a service go: releases waiting for it start."""
    environment, service = _where(target)
    with _store(_settings()) as store:
        try:
            released = unlock(
                store,
                environment,
                service,
                actor=actor or _actor(),
                force=force,
                now=datetime.now(UTC),
            )
        except (NotLocked, NotYours) as refused:
            raise _Abort(str(refused)) from refused
    click.echo(f"unlocked {released.environment}/{released.service}")


@cli.command()
@_JSON_OPTION
def locks(as_json: bool) -> None:
    """Services held by people now, and what happened to locks lately."""
    with _store(_settings()) as store:
        held, past = current(store), history(store)
    if as_json:
        _emit({"locks": [h.model_dump(mode="json") for h in held], "history": past})
        return
    for taken in held:
        click.echo(_describe(taken))
    if not held:
        click.echo("no locks")
    for entry in past:
        click.echo(f"  {entry['at']}  {entry['action']:<18} {entry['lock']} by {entry['by']}")


def _describe(taken: ManualLock) -> str:
    until = f" until {taken.until:%Y-%m-%d %H:%M} UTC" if taken.until else ""
    return f"{taken.environment}/{taken.service} by {taken.owner}{until}: {taken.reason}"
