"""Per-host health checks: the verify step of every batch.

Each check (an HTTP call, or a command's exit code) is tried until it passes or its
tries run out; checks run in the order the fleet file gives, and the first that stays
unhealthy fails the step: the host is broken, and waiting out the others' retries
would only delay putting it back.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.fleet.base import Placeholders
from orchestrator.fleet.checks import CommandCheck, HealthCheck, HealthChecks, HttpCheck
from orchestrator.vocabulary import Step
from workers.drivers import StepError
from workers.http_call import NoAnswer, http_request, safe_url
from workers.process import run_command

__all__ = ["check_health"]

_NAME_LIMIT = 120  # characters of a check's description in a timeline line
_EXCERPT_LIMIT = 100  # characters of an answer in the reason of a failure


@dataclass(frozen=True)
class _Probe:
    """One try of one check."""

    healthy: bool
    why: str = ""  # what was wrong, when not healthy
    output: str = ""  # the answer's excerpt or the command's output


def check_health(
    checks: HealthChecks,
    *,
    host: str,
    service: str,
    environment: str,
    version: str,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Wait ``settle_s``, then run every check; a short text of what passed.

    Raises :class:`StepError` (step ``verify``) naming the check that stayed unhealthy,
    why, and after how many tries.
    """
    values = {"host": host, "service": service, "environment": environment, "version": version}
    if checks.settle_s > 0:
        sleep(checks.settle_s)
    passed = [_until_healthy(check, checks, values, host, sleep) for check in checks.checks]
    return "healthy: " + "; ".join(passed)


def _until_healthy(
    check: HealthCheck,
    checks: HealthChecks,
    values: dict[str, str],
    host: str,
    sleep: Callable[[float], None],
) -> str:
    name = _describe(check, values)
    attempt, probe = 1, _probe(check, values)
    while not probe.healthy and attempt <= checks.retries:
        if checks.interval_s > 0:
            sleep(checks.interval_s)
        attempt, probe = attempt + 1, _probe(check, values)
    if probe.healthy:
        return f"{name} passed ({_tries(attempt)})"
    raise StepError(
        Step.VERIFY, host, f"{name} failed ({_tries(attempt)}): {probe.why}", probe.output
    )


def _tries(count: int) -> str:
    return "1 try" if count == 1 else f"{count} tries"


def _describe(check: HealthCheck, values: dict[str, str]) -> str:
    if isinstance(check, HttpCheck):
        text = f"GET {safe_url(Placeholders.fill(check.url, values))}"
    else:
        text = "command " + shlex.join(_argv(check, values))
    return text if len(text) <= _NAME_LIMIT else text[: _NAME_LIMIT - 1] + "…"


def _argv(check: CommandCheck, values: dict[str, str]) -> list[str]:
    return [Placeholders.fill(arg, values) for arg in check.argv]


def _probe(check: HealthCheck, values: dict[str, str]) -> _Probe:
    if isinstance(check, HttpCheck):
        return _probe_http(check, values)
    return _probe_command(check, values)


def _probe_http(check: HttpCheck, values: dict[str, str]) -> _Probe:
    url = Placeholders.fill(check.url, values)
    try:
        answer = http_request("GET", url, timeout_s=check.timeout_s)
    except NoAnswer as exc:  # refused, unreachable or timed out: its text says which
        # The check's name already says which URL; keep the reason to what went wrong.
        return _Probe(False, str(exc).removeprefix(f"GET {safe_url(url)}: "))
    # The reason carries a short excerpt (it is what a person reads first); the step's
    # output carries a longer one.
    short, long = answer.excerpt(_EXCERPT_LIMIT), answer.excerpt()
    if answer.status not in check.status:
        expected = " or ".join(str(s) for s in check.status)
        return _Probe(False, f"answered {answer.status}, expected {expected}: {short!r}", long)
    if check.body is not None and check.body not in answer.body.decode("utf-8", "replace"):
        return _Probe(False, f"answer lacks {check.body!r}: {short!r}", long)
    return _Probe(True)


def _probe_command(check: CommandCheck, values: dict[str, str]) -> _Probe:
    result = run_command(_argv(check, values), timeout_s=check.timeout_s)
    return _Probe(result.ok, result.failure(), result.output)
