"""What people decide about a running release: approve, reject, pause, resume, retry, abort.

Each command is sent on the bus as the person who gives it (``--actor``, by default the
login name) and waits until the coordinator has handled it, so that a refusal (an
approval by the requester where the environment wants another approver, a pause of a
release that has ended) is said here, with exit code 2, not only in the timeline.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from orchestrator.cli.common import EXIT_UNAVAILABLE, _Abort, _actor, _bus, _settings, _store, cli
from orchestrator.client import Client
from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    ApproveRelease,
    Message,
    PauseRelease,
    RejectRelease,
    ResumeRelease,
    RetryRelease,
)
from orchestrator.narration import describe

__all__ = ["abort", "approve", "pause", "reject", "resume", "retry"]

_ACTOR_OPTION = click.option("--actor", default=None, help="Who decides (default: login name).")
_REASON_OPTION = click.option("--reason", default="", help="Why, for the timeline.")


def _decide(release_id: str, payload: Message, actor: str | None, done: str) -> None:
    settings = _settings()
    with _store(settings) as store, _bus(settings) as bus:
        client = Client(store, bus)
        if client.state(release_id) is None:
            raise _Abort(f"no release {release_id!r}")
        try:
            caused = client.decide(release_id, payload, actor or _actor())
        except TimeoutError as error:
            raise _Abort(f"sent, but {error}", EXIT_UNAVAILABLE) from error
    for message in caused:
        if isinstance(message.payload, ApprovalRefused):
            raise _Abort(f"refused: {message.payload.reason}")
    click.echo(f"{release_id}: {done}")
    for message in caused:
        click.echo("  " + describe(message))


def _command(name: str, summary: str, build: Callable[[str], Message], done: str) -> click.Command:
    @_ACTOR_OPTION
    @_REASON_OPTION
    @click.argument("release_id")
    def command(release_id: str, reason: str, actor: str | None) -> None:
        _decide(release_id, build(reason), actor, done)

    command.__doc__ = summary
    return cli.command(name)(command)


abort = _command(
    "abort",
    "Stop a release: nothing new starts, and what was done is rolled back.",
    lambda reason: AbortRelease(reason=reason),
    "abort taken; `drover release show` follows the rollback",
)
reject = _command(
    "reject",
    "Say no to what a release waits for: it ends, and what was done is rolled back.",
    lambda reason: RejectRelease(reason=reason),
    "rejected",
)
pause = _command(
    "pause",
    "Start nothing new; workers stop between batches until `drover resume`.",
    lambda reason: PauseRelease(reason=reason),
    "paused",
)
resume = _command(
    "resume",
    "Carry on a paused release.",
    lambda reason: ResumeRelease(),
    "resumed",
)
retry = _command(
    "retry",
    "Run a release that failed or was rolled back again, from where it stopped.",
    lambda reason: RetryRelease(reason=reason),
    "retried",
)


@cli.command()
@click.argument("release_id")
@click.option(
    "--component", default=None, help="Approve only this component (default: all that wait)."
)
@click.option("--comment", default="", help="For the timeline.")
@_ACTOR_OPTION
def approve(release_id: str, component: str | None, comment: str, actor: str | None) -> None:
    """Let a release (or a component, or an inconclusive canary) go on."""
    _decide(release_id, ApproveRelease(component=component, comment=comment), actor, "approved")
