"""The commands that run Drover and look at it: run, demo, the long-running roles,
releases, the fleet, queues, dead letters and the message schema."""

from __future__ import annotations

import json
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import click

from orchestrator import contract
from orchestrator.cli.common import (
    _FLEET_OPTION,
    _JSON_OPTION,
    _VERBOSE_OPTION,
    EXIT_OK,
    EXIT_RELEASE_FAILED,
    _Abort,
    _actor,
    _bus,
    _connected,
    _distributed_settings,
    _emit,
    _exit_code,
    _fleet,
    _load_release,
    _print_progress,
    _quiet_unless,
    _run_release,
    _settings,
    _store,
    cli,
)
from orchestrator.client import Client, fleet_versions, release_view, show
from orchestrator.contract import (
    MessageDecodeError,
    decode,
)
from orchestrator.runtime import ConfigurationError, embedded
from orchestrator.runtime import run_coordinator as _run_coordinator
from orchestrator.runtime import run_worker as _run_worker
from orchestrator.saga import ReleaseStatus
from orchestrator.settings import EMBEDDED_BROKER_URL
from orchestrator.store import DeadLetter


@cli.command()
@click.argument("release_file", type=click.Path(dir_okay=False, path_type=Path))
@_FLEET_OPTION
@_JSON_OPTION
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="Seconds.")
@_VERBOSE_OPTION
def run(
    release_file: Path, fleet_path: Path | None, as_json: bool, timeout_s: float, verbose: bool
) -> None:
    """Run one release in this process, on the embedded default (no broker needed)."""
    settings = _settings(
        fleet=fleet_path, broker_url=EMBEDDED_BROKER_URL, log_level=_quiet_unless(verbose)
    )
    fleet = _fleet(settings)
    request = _load_release(release_file, fleet)
    with _connected(settings, fleet) as parts, embedded(parts):
        client = Client(parts.store, parts.bus)
        state = _run_release(client, request, _actor(), timeout_s, as_json)
    sys.exit(_exit_code(state))


@cli.command()
@_VERBOSE_OPTION
def demo(verbose: bool) -> None:
    """A release that fails and is rolled back, then one that succeeds; all in-process."""
    files = resources.files("orchestrator") / "demo"
    with tempfile.TemporaryDirectory(prefix="drover-demo-") as scratch:
        settings = _settings(
            broker_url=EMBEDDED_BROKER_URL,
            log_level=_quiet_unless(verbose),
            store_url=f"sqlite:///{scratch}/store.db",
            fleet=Path(str(files / "fleet.yaml")),
        )
        fleet = _fleet(settings)
        failing = _load_release(Path(str(files / "release-fails.yaml")), fleet)
        fixed = _load_release(Path(str(files / "release-fixed.yaml")), fleet)
        with _connected(settings, fleet) as parts, embedded(parts):
            client = Client(parts.store, parts.bus)
            click.echo("== 1. checkout 3.1.0 fails verification on checkout-3 ==")
            first = _run_release(client, failing, "demo", 120, as_json=False)
            _print_versions(fleet_versions(fleet, parts.store))
            click.echo("\n== 2. the fixed checkout 3.1.1 ==")
            second = _run_release(client, fixed, "demo", 120, as_json=False)
            _print_versions(fleet_versions(fleet, parts.store))
    ok = first.status is ReleaseStatus.ROLLED_BACK and second.status is ReleaseStatus.SUCCEEDED
    sys.exit(EXIT_OK if ok else EXIT_RELEASE_FAILED)


def _print_versions(versions: dict[str, dict[str, dict[str, str]]]) -> None:
    for environment, services in versions.items():
        click.echo(environment)
        for service, hosts in services.items():
            click.echo(f"  {service:<20} " + ", ".join(f"{h}={v}" for h, v in hosts.items()))


# --- the long-running roles ---------------------------------------------------------------


@cli.command()
@_FLEET_OPTION
def coordinator(fleet_path: Path | None) -> None:
    """Run the saga coordinator until SIGTERM/SIGINT."""
    settings = _distributed_settings(fleet_path)
    with _connected(settings) as parts:
        _run_coordinator(parts)


@cli.command()
@_FLEET_OPTION
@click.option(
    "--service",
    "services",
    multiple=True,
    required=True,
    help="A service whose queue to consume (repeatable), or 'all'.",
)
def worker(fleet_path: Path | None, services: tuple[str, ...]) -> None:
    """Run a Celery worker that deploys and rolls back the services given by --service."""
    settings = _distributed_settings(fleet_path)
    with _connected(settings) as parts:
        chosen = parts.fleet.service_names() if "all" in services else list(services)
        try:
            _run_worker(parts, chosen)
        except ConfigurationError as error:
            raise _Abort(str(error)) from error


# --- submitting and inspecting ------------------------------------------------------------


@cli.group()
def release() -> None:
    """Submit and inspect releases."""


@release.command("submit")
@click.argument("release_file", type=click.Path(dir_okay=False, path_type=Path))
@_FLEET_OPTION
@click.option("--wait", is_flag=True, help="Wait for the end; exit 0/1/2 by the result.")
@_JSON_OPTION
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="Seconds.")
@click.option("--actor", default=None, help="Who is asking (default: the login name).")
def release_submit(
    *,
    release_file: Path,
    fleet_path: Path | None,
    wait: bool,
    as_json: bool,
    timeout_s: float,
    actor: str | None,
) -> None:
    """Submit a release over the bus to a running coordinator."""
    settings = _distributed_settings(fleet_path)
    fleet = _fleet(settings)
    request = _load_release(release_file, fleet)
    with _connected(settings, fleet) as parts:
        client = Client(parts.store, parts.bus)
        if not wait:
            release_id = client.submit(request, actor=actor or _actor())
            _emit({"id": release_id}) if as_json else click.echo(release_id)
            return
        state = _run_release(client, request, actor or _actor(), timeout_s, as_json)
    sys.exit(_exit_code(state))


@release.command("show")
@click.argument("release_id")
@_JSON_OPTION
def release_show(release_id: str, as_json: bool) -> None:
    """One release: its components and its timeline."""
    with _store(_settings()) as store:
        view = show(store, release_id)
        if view is None:
            raise _Abort(f"no release {release_id!r}")
        if as_json:
            _emit(view)
            return
        _print_release(view)
        for message in store.timeline(release_id):
            _print_progress(message)


def _print_release(view: dict[str, Any]) -> None:
    click.echo(f"{view['id']}  {view['state']}  {view['environment']}  {view['reason']}")
    if view["failure"]:
        click.echo(f"  failure: {view['failure']}")
    if view.get("waiting_for"):
        ahead = ", ".join(view["waiting_for"])
        click.echo(f"  waiting for: {ahead} (ahead of it in the queues of its services)")
    for c in view["components"]:
        if c["flag"] is not None:  # a feature flag turned, not a version deployed
            turned = "on" if c["enabled"] else "off"
            click.echo(f"  {c['component']:<20} flag turned {turned:<13} {c['state']}")
            continue
        previous = c["previous_version"] or "?"
        click.echo(f"  {c['service']:<20} {previous} -> {c['version']:<12} {c['state']}")


@cli.command()
@_JSON_OPTION
@click.option("--limit", default=50, show_default=True)
def releases(as_json: bool, limit: int) -> None:
    """Recent releases, newest first."""
    with _store(_settings()) as store:
        views = [release_view(state) for state in store.releases(limit)]
    if as_json:
        _emit(views)
        return
    for view in views:
        click.echo(
            f"{view['id']}  {view['created_at'][:19]}  {view['state']:<13} "
            f"{view['environment']}  {len(view['components'])} components  {view['reason']}"
        )


@cli.command()
@_FLEET_OPTION
@_JSON_OPTION
def fleet(fleet_path: Path | None, as_json: bool) -> None:
    """The version each host runs, by environment and service."""
    settings = _settings(fleet=fleet_path)
    fleet_file = _fleet(settings)
    with _store(settings) as store:
        versions = fleet_versions(fleet_file, store)
    if as_json:
        _emit(versions)
    else:
        _print_versions(versions)


@cli.group("dead-letters", invoke_without_command=True)
@_JSON_OPTION
@click.pass_context
def dead_letters(context: click.Context, as_json: bool) -> None:
    """Messages nobody could use: list them, or requeue or drop one."""
    if context.invoked_subcommand is not None:
        return
    with _store(_settings()) as store:
        letters = store.dead_letters()
    if as_json:
        _emit([_letter_view(letter) for letter in letters])
        return
    for letter in letters:
        click.echo(
            f"{letter.id}  {letter.at:%Y-%m-%d %H:%M:%S}  {letter.source:<12} {letter.reason}"
        )


def _letter_view(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "at": letter.at.isoformat(),
        "source": letter.source,
        "reason": letter.reason,
        "body": letter.raw.decode("utf-8", errors="replace"),
    }


@dead_letters.command("requeue")
@click.argument("letter_id")
def dead_letters_requeue(letter_id: str) -> None:
    """Publish a dead letter again, where its type goes, and forget it."""
    settings = _distributed_settings(None)
    with _store(settings) as store, _bus(settings) as bus:
        letter = store.dead_letter(letter_id)
        if letter is None:
            raise _Abort(f"no dead letter {letter_id!r}")
        try:
            message = decode(letter.raw)
        except MessageDecodeError as error:
            raise _Abort(
                f"{letter_id} is not a message Drover can read ({error}); drop it"
            ) from error
        bus.publish(message)
        store.remove_dead_letter(letter_id)
    click.echo(f"{letter_id} requeued as {message.type} of {message.release_id}")


@dead_letters.command("drop")
@click.argument("letter_id")
def dead_letters_drop(letter_id: str) -> None:
    """Forget a dead letter for good."""
    with _store(_settings()) as store:
        if not store.remove_dead_letter(letter_id):
            raise _Abort(f"no dead letter {letter_id!r}")
    click.echo(f"{letter_id} dropped")


@cli.command()
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Write one file per type."
)
def schema(out: Path | None) -> None:
    """The JSON Schema of every message, for publishers in other languages."""
    schemas = contract.json_schema()
    if out is None:
        _emit(schemas)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, document in schemas.items():
        (out / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    click.echo(f"{len(schemas)} schemas written to {out}")
