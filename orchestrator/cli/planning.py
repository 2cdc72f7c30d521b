"""``drover plan``: what a release would do, without touching anything."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.common import (
    _FLEET_OPTION,
    _JSON_OPTION,
    _emit,
    _fleet,
    _load_release,
    _settings,
    cli,
)
from orchestrator.plan_view import plan_lines, plan_view

__all__ = ["plan"]


@cli.command()
@click.argument("release_file", type=click.Path(dir_okay=False, path_type=Path))
@_FLEET_OPTION
@_JSON_OPTION
def plan(release_file: Path, fleet_path: Path | None, as_json: bool) -> None:
    """Show a release's waves, batches, gates and approvals, and what a failure would undo."""
    settings = _settings(fleet=fleet_path)
    fleet = _fleet(settings)
    request = _load_release(release_file, fleet)
    view = plan_view(fleet, request)
    if as_json:
        _emit(view)
        return
    for line in plan_lines(view):
        click.echo(line)
