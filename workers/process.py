"""Running a command from the fleet file: a list of arguments, never a shell string.

Shared by the shell driver and command health checks. The command runs in its own
process group, so a timeout ends it together with anything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CommandResult", "run_command"]

# Drover's own settings (tokens, store URLs) are not the commands' business.
_PRIVATE_PREFIX = "DROVER_"


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None: it did not finish (timed out) or could not start
    output: str  # stdout, then stderr, cut to the limit: for people
    problem: str = ""  # why it did not finish or start, in words
    stdout: str = ""  # stdout alone, cut to the limit: the answer of a command that answers

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def failure(self) -> str:
        """What went wrong, in words; "" when it exited 0."""
        if self.problem:
            return self.problem
        return "" if self.ok else f"exited with {self.exit_code}"


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    output_limit: int = 4000,
    environ: Mapping[str, str] | None = None,
) -> CommandResult:
    env = {
        k: v
        for k, v in (os.environ if environ is None else environ).items()
        if not k.startswith(_PRIVATE_PREFIX)
    }
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(None, "", f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    # Apart, so that a warning on stderr cannot spoil what a query prints on stdout.
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        out, err = process.communicate()
        problem = f"timed out after {timeout_s:g} s"
        return CommandResult(None, _cut(out + err, output_limit), problem, _cut(out, output_limit))
    both = _cut(out + err, output_limit)
    return CommandResult(process.returncode, both, stdout=_cut(out, output_limit))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended between timeout and kill
        os.killpg(process.pid, signal.SIGKILL)


def _cut(raw: bytes, limit: int) -> str:
    text = raw.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text
    # The end of a failing command's output usually says why: keep it, and say what went.
    dropped = len(text) - limit
    return (
        f"[{dropped} characters cut]\n" + text[-limit:] if limit else f"[{dropped} characters cut]"
    )
