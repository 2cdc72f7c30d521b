"""``drover api``, and ``drover token`` to make what it checks callers by."""

from __future__ import annotations

from pathlib import Path

import click
import uvicorn
import yaml

from orchestrator.api.app import create_app
from orchestrator.api.tokens import load_tokens, new_token
from orchestrator.cli.common import _FLEET_OPTION, _Abort, _connected, _distributed_settings, cli
from orchestrator.observability import get_logger
from orchestrator.plans import InvalidInput

__all__ = ["api", "token"]

log = get_logger(__name__)


@cli.command()
@_FLEET_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65_535))
def api(fleet_path: Path | None, host: str, port: int) -> None:
    """The HTTP API (OpenAPI at /openapi.json) and the dashboard (/), until SIGTERM."""
    settings = _distributed_settings(fleet_path)
    try:
        tokens = load_tokens(settings.api_tokens)
    except InvalidInput as invalid:
        raise _Abort(invalid.explain()) from invalid
    if not tokens.tokens:
        log.warning("no API tokens configured (DROVER_API_TOKENS): every call will be refused")
    with _connected(settings) as parts:
        uvicorn.run(create_app(parts, tokens), host=host, port=port, log_level="warning")


@cli.command()
@click.argument("name")
@click.option(
    "--may",
    "scopes",
    multiple=True,
    required=True,
    help="read, deploy:ENV[/SERVICE], approve:ENV, operate:ENV (repeatable).",
)
def token(name: str, scopes: tuple[str, ...]) -> None:
    """Make an API token: the token on stderr (give it to the caller, once), and on stdout
    the entry for the DROVER_API_TOKENS file, which holds only its hash."""
    try:
        secret, entry = new_token(name, scopes)
    except ValueError as error:  # a scope or a name that is not valid
        raise _Abort(str(error)) from error
    click.echo(secret, err=True)
    click.echo(yaml.safe_dump({"tokens": [entry.model_dump()]}, sort_keys=False), nl=False)
