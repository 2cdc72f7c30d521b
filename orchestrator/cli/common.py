"""What every ``drover`` command shares: the group, options, exit codes, and configuration
read once at the edge."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import click
from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.client import Client
from orchestrator.contract import (
    Envelope,
    StepStarted,
    SubmitRelease,
    problems_from,
)
from orchestrator.fleet import Fleet
from orchestrator.narration import describe
from orchestrator.observability import configure_logging
from orchestrator.plans import InvalidInput, load_fleet, load_release, plan_release
from orchestrator.runtime import ConfigurationError, Parts, connect, open_bus
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.settings import Settings, UnknownSetting
from orchestrator.store import Store, open_store

EXIT_OK: Final = 0
EXIT_RELEASE_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_UNAVAILABLE: Final = 3  # the broker or store could not be reached, or --timeout passed

_FLEET_OPTION = click.option(
    "--fleet",
    "fleet_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The fleet file (default: $DROVER_FLEET).",
)
_JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
_VERBOSE_OPTION = click.option(
    "-v", "--verbose", is_flag=True, help="Log every step to stderr, not only warnings."
)


class _Abort(Exception):
    """Stop the command with a message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_INVALID):
        super().__init__(message)
        self.code = code


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Drover: releases across many services and hosts, driven by a message bus.

    \b
    Configuration comes from environment variables (see the README):
      DROVER_BROKER_URL   redis://…, amqp://… or memory:// (default, one process)
      DROVER_STORE_URL    redis://… or sqlite:///path (default sqlite:///.drover/store.db)
      DROVER_FLEET        the fleet file
      DROVER_NAMESPACE    prefix of every queue, exchange and store key (default drover)
      DROVER_WORKER_CONCURRENCY, DROVER_LEASE_TTL_S, DROVER_DELIVERY_LIMIT,
      DROVER_REDIS_VISIBILITY_TIMEOUT_S, DROVER_LOG_FORMAT, DROVER_LOG_LEVEL
      drills only: DROVER_CRASH_AT, DROVER_DRILL_DUPLICATE_PUBLISHES

    \b
    Exit codes: 0 succeeded, 1 rolled back or failed, 2 invalid input or configuration,
    3 the broker or store unreachable, or --timeout passed.
    """


# --- configuration at the edge ------------------------------------------------------------


def _settings(**overrides: Any) -> Settings:
    try:
        settings = Settings.load(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        problems = "\n".join(f"  DROVER_{p.path.upper()}: {p.reason}" for p in problems_from(error))
        raise _Abort(f"invalid configuration:\n{problems}") from error
    except UnknownSetting as error:
        raise _Abort(f"invalid configuration: {error}") from error
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _fleet(settings: Settings) -> Fleet:
    if settings.fleet is None:
        raise _Abort("no fleet file: set DROVER_FLEET or pass --fleet")
    try:
        return load_fleet(settings.fleet)
    except InvalidInput as invalid:
        raise _Abort(invalid.explain()) from invalid


@contextmanager
def _connected(settings: Settings, fleet: Fleet | None = None) -> Iterator[Parts]:
    try:
        parts = connect(settings, fleet or _fleet(settings))
    except (ConfigurationError, ValueError) as error:
        raise _Abort(str(error)) from error
    try:
        yield parts
    finally:
        parts.close()


@contextmanager
def _store(settings: Settings) -> Iterator[Store]:
    """Only the store, for commands that read what Drover recorded."""
    try:
        store = open_store(settings.store_url, namespace=settings.namespace)
    except ValueError as error:
        raise _Abort(str(error)) from error
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _bus(settings: Settings) -> Iterator[Bus]:
    """Only the bus, for commands that publish without deploying."""
    bus = open_bus(settings)
    try:
        yield bus
    finally:
        bus.close()


def _load_release(path: Path, fleet: Fleet) -> SubmitRelease:
    try:
        request = load_release(path)
        plan_release(fleet, request, source=str(path))
    except InvalidInput as invalid:
        raise _Abort(invalid.explain()) from invalid
    return request


def _print_progress(message: Envelope) -> None:
    # A step's end line names the step, its hosts and how long it took; its start line
    # would only double the length of what a person reads. (--json keeps every entry.)
    if not isinstance(message.payload, StepStarted):
        click.echo("  " + describe(message))


def _quiet_unless(verbose: bool) -> str:
    # The progress printed on stdout is the story; logs add to it only when asked for.
    return "info" if verbose else "warning"


def _exit_code(state: ReleaseState) -> int:
    if state.status is ReleaseStatus.SUCCEEDED:
        return EXIT_OK
    if state.status is ReleaseStatus.REJECTED:
        return EXIT_INVALID
    return EXIT_RELEASE_FAILED


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --- running releases ---------------------------------------------------------------------


def _run_release(
    client: Client, request: SubmitRelease, actor: str, timeout_s: float, as_json: bool
) -> ReleaseState:
    release_id = client.submit(request, actor=actor)
    if not as_json:
        click.echo(f"release {release_id} submitted")
    try:
        if as_json:
            client.wait(release_id, timeout_s)
        else:
            for message in client.follow(release_id, timeout_s):
                _print_progress(message)
    except TimeoutError as error:
        raise _Abort(f"{error}; it goes on without this command", EXIT_UNAVAILABLE) from error
    state = client.state(release_id)
    assert state is not None
    if as_json:
        _emit(client.show(release_id))
    else:
        click.echo(f"release {release_id}: {state.status}")
    return state


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _distributed_settings(fleet_path: Path | None) -> Settings:
    settings = _settings(fleet=fleet_path)
    if settings.embedded:
        raise _Abort(
            "DROVER_BROKER_URL is memory:// (one process only); set it to redis://… or "
            "amqp://… to run roles as separate processes, or use `drover run`"
        )
    return settings
