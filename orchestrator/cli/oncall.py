"""What the engineer on call asks: is it green, how deep are the queues, how is this
release doing right now."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from orchestrator.cli.common import (
    _FLEET_OPTION,
    _JSON_OPTION,
    _Abort,
    _connected,
    _distributed_settings,
    _emit,
    cli,
)
from orchestrator.queues import QueueDepth, queue_depths
from orchestrator.runtime import Parts
from orchestrator.status import Thresholds, gather, judge
from orchestrator.watching import watch_lines

__all__ = ["queues", "status", "watch"]

_WATCH_OPTION = click.option(
    "--watch", "every_s", type=float, default=None, help="Redraw every this many seconds."
)
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: a redraw on a terminal


_DEFAULTS = Thresholds()


@cli.command()
@_FLEET_OPTION
@_JSON_OPTION
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.stuck_after.total_seconds(),
    show_default=True,
    help="Seconds a running release may be silent.",
)
@click.option(
    "--old-after",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.age_amber_s,
    show_default=True,
    help="Seconds a message may wait (amber; red at five times that).",
)
@click.option(
    "--backing-up-over",
    type=click.IntRange(min=0),
    default=_DEFAULTS.queue_amber,
    show_default=True,
    help="Messages a queue may hold.",
)
def status(
    fleet_path: Path | None,
    as_json: bool,
    stuck_after: float,
    old_after: float,
    backing_up_over: int,
) -> None:
    """One light, green, amber or red, with every reason; exit 0, 1 or 2 by it."""
    limits = Thresholds(
        stuck_after=timedelta(seconds=stuck_after),
        age_amber_s=old_after,
        age_red_s=old_after * 5,
        queue_amber=backing_up_over,
    )
    with _connected(_distributed_settings(fleet_path)) as parts:
        light, reasons = judge(gather(parts, datetime.now(UTC), limits), limits)
    if as_json:
        _emit(
            {
                "light": light.name.lower(),
                "reasons": [
                    {"light": r.light.name.lower(), "what": r.what, "detail": r.detail}
                    for r in reasons
                ],
            }
        )
    else:
        click.echo(light.name.lower())
        for reason in reasons:
            click.echo(f"  {reason.light.name.lower():<5} {reason.what}: {reason.detail}")
    sys.exit(int(light))


@cli.command()
@_FLEET_OPTION
@_JSON_OPTION
@_WATCH_OPTION
def queues(fleet_path: Path | None, as_json: bool, every_s: float | None) -> None:
    """Each Drover queue: ready, in flight, consumers, and the oldest message's age."""
    with _connected(_distributed_settings(fleet_path)) as parts:
        _repeat(every_s, lambda: _show_queues(queue_depths(parts), as_json))


def _show_queues(rows: Sequence[QueueDepth], as_json: bool) -> None:
    if as_json:
        _emit(rows)
        return
    click.echo(f"{'queue':<40} {'ready':>7} {'in flight':>10} {'consumers':>10} {'oldest':>9}")
    for row in rows:
        in_flight = "?" if row["unacked"] is None else row["unacked"]
        consumers = "?" if row["consumers"] is None else row["consumers"]
        age = "-" if row["oldest_age_s"] is None else f"{row['oldest_age_s']:.0f} s"
        click.echo(f"{row['name']:<40} {row['ready']:>7} {in_flight:>10} {consumers:>10} {age:>9}")
    sources = sorted({row["source"] for row in rows})
    click.echo(f"(read from {', '.join(sources)}; ? = the broker cannot tell)")


def _repeat(every_s: float | None, show: Callable[[], None]) -> None:
    """Show once, or, with ``--watch``, redraw until Ctrl-C."""
    if every_s is None:
        show()
        return
    if every_s <= 0:
        raise _Abort("--watch takes a number of seconds above 0")
    while True:
        if sys.stdout.isatty():
            click.echo(_CLEAR, nl=False)
        show()
        time.sleep(every_s)


@cli.command()
@click.argument("release_id")
@_FLEET_OPTION
@click.option("--every", "every_s", type=float, default=0.5, show_default=True, help="Seconds.")
def watch(release_id: str, fleet_path: Path | None, every_s: float) -> None:
    """A release live: per component its strategy, batches, hosts, gates; exit by its end."""
    with _connected(_distributed_settings(fleet_path)) as parts:
        if parts.store.load(release_id) is None:
            raise _Abort(f"no release {release_id!r}")
        sys.exit(_follow(parts, release_id, every_s))


def _follow(parts: Parts, release_id: str, every_s: float) -> int:
    """Redraw when the timeline grows; the release's exit code once it has ended."""
    drawn = -1
    while True:
        stored = parts.store.load(release_id)
        assert stored is not None
        timeline = parts.store.timeline(release_id)
        if len(timeline) != drawn:
            if sys.stdout.isatty():
                click.echo(_CLEAR, nl=False)
            else:
                click.echo("")  # a log of successive views, when piped
            for line in watch_lines(stored.state, timeline, parts.fleet):
                click.echo(line)
            drawn = len(timeline)
        if stored.state.status.is_terminal:
            return 0 if stored.state.status.value == "succeeded" else 1
        time.sleep(every_s)
