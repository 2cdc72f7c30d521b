"""A driver that runs the fleet file's command for each action.

A driver is a security boundary: hosts, versions and flag names arrive in messages on a
bus, and here they become arguments of programs that change production. So every value
is held to its strict pattern from :mod:`orchestrator.vocabulary` before it is put into
an argument, and a command is a list of arguments run without a shell: a value fills
(part of) exactly one argument, and nothing in it or in the template is ever parsed as
shell syntax. Commands run through :func:`workers.process.run_command`, which ends them,
and whatever they started, on a timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from pydantic import TypeAdapter, ValidationError

from orchestrator.fleet.base import Placeholders
from orchestrator.fleet.drivers import ShellDriverConfig
from orchestrator.vocabulary import HostName, Name, Step, Version
from workers.drivers import Colour, Driver, StepError
from workers.process import run_command

__all__ = ["ShellDriver"]

Argv = tuple[str, ...]

# The pattern each placeholder's value must match, and what to call it when it does not.
# The adapters reuse the vocabulary's own types, so there is one definition of each.
_PATTERNS: Final[Mapping[str, tuple[TypeAdapter[str], str]]] = {
    "host": (TypeAdapter(HostName), "host name"),
    "version": (TypeAdapter(Version), "version"),
    "service": (TypeAdapter(Name), "service name"),
    "environment": (TypeAdapter(Name), "environment name"),
    "flag": (TypeAdapter(Name), "flag name"),
}
_COLOURS: Final[Mapping[str, Colour]] = {"blue": "blue", "green": "green"}
_FLAG_STATES: Final[Mapping[str, bool]] = {
    "on": True,
    "true": True,
    "1": True,
    "off": False,
    "false": False,
    "0": False,
}
# ASCII digits only (int() would also take "+3", "1_000" and other scripts' digits), and
# few enough of them that no real count is refused and int() never meets a huge number.
_COUNT: Final = re.compile(r"[0-9]{1,18}")
_NO_FLAG_COMMANDS: Final = "no set_flag/get_flag command in the fleet file"


class ShellDriver(Driver):
    """Runs one command per operation; its exit code is the step's result.

    Acting operations return the command's output (cut to ``output_limit``) for the
    release timeline. Query operations (``current_version``, ``in_flight``,
    ``live_colour``, ``flag``) parse what their command prints and refuse anything else.
    """

    def __init__(self, config: ShellDriverConfig, *, environment: str, service: str):
        self._commands = config.commands
        self._timeout_s = config.timeout_s
        self._output_limit = config.output_limit
        # Checked on every call, with the other values, so that a bad name is a StepError
        # of the step it would have served rather than an error while the worker starts.
        self._environment = environment
        self._service = service

    # -- hosts ------------------------------------------------------------------------

    def current_version(self, host: str) -> str:
        output = self._run(
            Step.DEPLOY, host, "version", self._commands.version, {"host": host}, answer=True
        )
        version = output.strip()
        if not _matches("version", version):
            raise StepError(
                Step.DEPLOY,
                host,
                f"version command printed {_excerpt(version)}, which is not a version",
                output=output,
            )
        return version

    def drain(self, host: str) -> str:
        return self._run(Step.DRAIN, host, "drain", self._commands.drain, {"host": host})

    def in_flight(self, host: str) -> int:
        template = self._commands.in_flight
        if template is None:
            self._check(Step.DRAIN, host, {"host": host})
            return 0  # the driver cannot tell: the drain does not wait
        output = self._run(Step.DRAIN, host, "in_flight", template, {"host": host}, answer=True)
        text = output.strip()
        if not _COUNT.fullmatch(text):
            raise StepError(
                Step.DRAIN,
                host,
                f"in_flight command printed {_excerpt(text)}, which is not a count of requests",
                output=output,
            )
        return int(text)

    def deploy(self, host: str, version: str) -> str:
        return self._run(
            Step.DEPLOY, host, "deploy", self._commands.deploy, {"host": host, "version": version}
        )

    def verify(self, host: str, version: str) -> str:
        template = self._commands.verify
        if template is None:
            # Health checks are configured and run elsewhere; a driver may add nothing.
            self._check(Step.VERIFY, host, {"host": host, "version": version})
            return ""
        return self._run(Step.VERIFY, host, "verify", template, {"host": host, "version": version})

    def undrain(self, host: str) -> str:
        return self._run(Step.UNDRAIN, host, "undrain", self._commands.undrain, {"host": host})

    # -- the whole service -------------------------------------------------------------

    def live_colour(self) -> Colour | None:
        template = self._commands.live_colour
        if template is None:
            return None  # no blue/green here
        output = self._run(Step.SWITCH, "", "live_colour", template, {}, answer=True)
        word = output.strip().lower()
        if not word:
            return None  # blue/green was never used
        if word not in _COLOURS:
            raise StepError(
                Step.SWITCH,
                "",
                f"live_colour command printed {_excerpt(output.strip())}, not 'blue' or 'green'",
                output=output,
            )
        return _COLOURS[word]

    def switch(self, colour: Colour) -> str:
        # The type says blue or green, but the value came off the bus: check it anyway.
        if colour not in _COLOURS:
            raise StepError(Step.SWITCH, "", f"colour {_excerpt(colour)} is not blue or green")
        return self._run(Step.SWITCH, "", "switch", self._commands.switch, {"colour": colour})

    def flag(self, name: str) -> bool:
        template = self._commands.get_flag
        if template is None:
            raise StepError(Step.TOGGLE, "", _NO_FLAG_COMMANDS)
        output = self._run(Step.TOGGLE, "", "get_flag", template, {"flag": name}, answer=True)
        word = output.strip().lower()
        if word not in _FLAG_STATES:
            raise StepError(
                Step.TOGGLE,
                "",
                f"get_flag command printed {_excerpt(output.strip())}, not 'on' or 'off'",
                output=output,
            )
        return _FLAG_STATES[word]

    def set_flag(self, name: str, enabled: bool) -> str:
        template = self._commands.set_flag
        if template is None:
            raise StepError(Step.TOGGLE, "", _NO_FLAG_COMMANDS)
        state = "on" if enabled else "off"
        return self._run(Step.TOGGLE, "", "set_flag", template, {"flag": name, "enabled": state})

    # -- running a command -------------------------------------------------------------

    def _run(
        self,
        step: Step,
        host: str,
        label: str,
        template: Argv | None,
        values: Mapping[str, str],
        *,
        answer: bool = False,
    ) -> str:
        """Check the values, fill them into ``template``, run it; its output, or StepError.

        ``label`` names the command in errors: the step alone does not say whether, say,
        a drain failed in its ``drain`` or its ``in_flight`` command.
        """
        filled = self._check(step, host, values)
        if template is None:
            raise StepError(step, host, f"no {label} command in the fleet file")
        argv = self._fill(step, host, label, template, filled)
        result = run_command(argv, timeout_s=self._timeout_s, output_limit=self._output_limit)
        if not result.ok:
            raise StepError(step, host, f"{label} command {result.failure()}", result.output)
        # A query's answer is its stdout alone; an action's output is all it said.
        return result.stdout if answer else result.output

    def _check(self, step: Step, host: str, values: Mapping[str, str]) -> dict[str, str]:
        """All of an operation's values, each refused unless it matches its pattern.

        Every value is checked, used by the template or not: a message that names a host
        like ``h1;rm -rf /`` is wrong, whatever this fleet's commands happen to use.
        """
        checked = {"service": self._service, "environment": self._environment, **values}
        for placeholder, value in checked.items():
            if placeholder in _PATTERNS and not _matches(placeholder, value):
                what = _PATTERNS[placeholder][1]
                raise StepError(step, host, f"{_excerpt(value)} is not a valid {what}")
        return checked

    @staticmethod
    def _fill(step: Step, host: str, label: str, template: Argv, values: Mapping[str, str]) -> Argv:
        try:
            return tuple(Placeholders.fill(arg, dict(values)) for arg in template)
        except KeyError as exc:
            # The fleet file's validation allows only the placeholders each command gets,
            # so this is a mismatch between that list and this driver, not a user error.
            raise StepError(
                step, host, f"{label} command uses {{{exc.args[0]}}}, which it is not given"
            ) from exc


def _matches(placeholder: str, value: str) -> bool:
    adapter = _PATTERNS[placeholder][0]
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def _excerpt(text: str, limit: int = 60) -> str:
    """A value quoted for an error message: escaped (no newlines in logs) and short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
