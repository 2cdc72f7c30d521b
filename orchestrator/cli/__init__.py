"""The ``drover`` command.

Exit codes, everywhere: 0 the release succeeded (or the command did what it was asked),
1 the release was rolled back or failed, 2 the input or configuration was invalid,
3 the broker or store could not be reached, or --timeout passed.
"""

from __future__ import annotations

import sys

import click

from orchestrator.bus import BrokerUnavailable
from orchestrator.cli import commands, locking, oncall, people, planning, serving
from orchestrator.cli.common import EXIT_INVALID, EXIT_UNAVAILABLE, _Abort, cli
from orchestrator.store import StoreUnavailable

__all__ = ["main"]

# The modules whose commands join the group when they are imported.
_COMMANDS = (commands, locking, oncall, people, planning, serving)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except _Abort as abort:
        click.echo(f"drover: {abort}", err=True)
        sys.exit(abort.code)
    except BrokerUnavailable as error:
        click.echo(f"drover: the broker is unavailable: {error}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except StoreUnavailable as error:
        click.echo(f"drover: the store is unavailable: {error}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(EXIT_INVALID)
    except click.exceptions.Abort:
        sys.exit(130)
