"""The HTTP driver: a load balancer's API, an agent on every host, and a flag service.

Drover's HTTP driver protocol
=============================

Every body is JSON. ``{service}`` is the service's name; ``{host}`` a host as the fleet
file lists it. Any 2xx status is success.

Load balancer, at the base URL ``load_balancer``:

- ``POST {load_balancer}/services/{service}/hosts/{host}/drain``: the load balancer stops
  sending new requests to the host. Answers 2xx.
- ``POST {load_balancer}/services/{service}/hosts/{host}/undrain``: it sends them again.
- ``GET  {load_balancer}/services/{service}/hosts/{host}`` answers
  ``{"state": "serving" | "draining" | "drained", "in_flight": <requests still served>}``.
- ``GET  {load_balancer}/services/{service}/live`` answers
  ``{"colour": "blue" | "green" | null}`` (null: blue/green was never used).
- ``PUT  {load_balancer}/services/{service}/live`` with ``{"colour": "blue" | "green"}``
  moves the traffic to that colour. Answers 2xx.

Host agent, at the URL template ``agent`` (``{host}`` is filled in, e.g.
``http://{host}:9100``):

- ``GET  {agent}/services/{service}`` answers ``{"version": "<version>"}``.
- ``PUT  {agent}/services/{service}`` with ``{"version": "<version>"}`` answers 2xx once
  the host runs that version (the deploy is synchronous).
- ``GET  {agent}/services/{service}/health`` answers 2xx and
  ``{"version": "<version>", "healthy": true}`` when the host is healthy. Verify fails on
  any other status, on ``"healthy"`` other than true, or on another version.

Feature flags, at the base URL ``flags`` (optional):

- ``GET  {flags}/flags/{service}/{name}`` answers ``{"enabled": true | false}``.
- ``PUT  {flags}/flags/{service}/{name}`` with ``{"enabled": true | false}``. Answers 2xx.

If ``token_env`` is set, every request carries ``Authorization: Bearer <token>``, the
token read from that environment variable when the request is made.

A request that gets no answer, a 5xx or a 429 is tried again, ``retries`` more times,
``backoff_s`` apart and doubling; any other status is final. Every operation is
declarative ("host H is drained", "host H runs V"), so a request that went through
but whose answer was lost is harmless to send again. A failure names the method, the
URL (without credentials), the status and the start of the answer (or why there was
none), and how many tries were made; the token never appears in it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from pydantic import TypeAdapter, ValidationError

from orchestrator.fleet.base import Placeholders
from orchestrator.fleet.drivers import HttpDriverConfig
from orchestrator.vocabulary import HostName, Name, Step, Version
from workers.drivers import Colour, Driver, StepError
from workers.http_call import HttpAnswer, NoAnswer, http_request, safe_url

__all__ = ["HttpDriver"]

_HOST: Final = TypeAdapter(HostName)
_VERSION: Final = TypeAdapter(Version)
_NAME: Final = TypeAdapter(Name)
_COLOURS: Final = ("blue", "green")
# What a bearer token may hold: visible ASCII. Anything else could split the header, and
# http.client would quote the offending value (the token) in its error.
_TOKEN: Final = re.compile(r"[\x21-\x7e]+")
_REASON_EXCERPT: Final = 200  # characters of an answer quoted in an error or timeline
_OUTPUT_EXCERPT: Final = 2000  # characters of it kept as the error's output


class HttpDriver(Driver):
    """Drives one service of one environment through Drover's HTTP driver protocol.

    The URLs are the environment's own (each environment's fleet file gives its driver),
    so the environment appears in no path.
    """

    def __init__(self, config: HttpDriverConfig, *, environment: str, service: str):
        if not _valid(_NAME, service):
            raise ValueError(f"service {_shown(service)} is not a valid service name")
        self._config = config
        self._environment = environment  # kept for symmetry with the other drivers; in no URL
        self._service = service

    # Load balancer.

    def drain(self, host: str) -> str:
        url = self._lb_host(Step.DRAIN, host) + "/drain"
        return self._reply(Step.DRAIN, host, "POST", url).text()

    def undrain(self, host: str) -> str:
        url = self._lb_host(Step.UNDRAIN, host) + "/undrain"
        return self._reply(Step.UNDRAIN, host, "POST", url).text()

    def in_flight(self, host: str) -> int:
        reply = self._reply(Step.DRAIN, host, "GET", self._lb_host(Step.DRAIN, host))
        count = reply.object().get("in_flight")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise reply.malformed('{"in_flight": <a count, 0 or more>}')
        return count

    def live_colour(self) -> Colour | None:
        reply = self._reply(Step.SWITCH, "", "GET", self._live_url())
        colour = reply.object().get("colour")
        if colour is None:
            return None
        if colour in _COLOURS:
            return colour
        raise reply.malformed('{"colour": "blue" | "green" | null}')

    def switch(self, colour: Colour) -> str:
        if colour not in _COLOURS:  # from a bus message: the type is a hope, not a check
            raise StepError(Step.SWITCH, "", f"refused colour {_shown(colour)}: blue or green")
        return self._reply(Step.SWITCH, "", "PUT", self._live_url(), {"colour": colour}).text()

    # Host agent.

    def current_version(self, host: str) -> str:
        reply = self._reply(Step.DEPLOY, host, "GET", self._agent(Step.DEPLOY, host))
        version = reply.object().get("version")
        if not isinstance(version, str) or not _valid(_VERSION, version):
            raise reply.malformed('{"version": "<a version>"}')
        return version

    def deploy(self, host: str, version: str) -> str:
        url = self._agent(Step.DEPLOY, host)
        body = {"version": self._version(Step.DEPLOY, host, version)}
        timeout_s = self._config.deploy_timeout_s
        return self._reply(Step.DEPLOY, host, "PUT", url, body, timeout_s=timeout_s).text()

    def verify(self, host: str, version: str) -> str:
        expected = self._version(Step.VERIFY, host, version)
        url = self._agent(Step.VERIFY, host) + "/health"
        reply = self._reply(Step.VERIFY, host, "GET", url)
        health = reply.object()
        if health.get("healthy") is not True:
            raise reply.failure(f"the host is not healthy: {reply.excerpt()}")
        if health.get("version") != expected:
            running = _shown(health.get("version"))
            raise reply.failure(f"the host runs {running}, not {expected!r}")
        return reply.text()

    # Flags.

    def flag(self, name: str) -> bool:
        reply = self._reply(Step.TOGGLE, "", "GET", self._flag_url(name))
        enabled = reply.object().get("enabled")
        if not isinstance(enabled, bool):
            raise reply.malformed('{"enabled": true | false}')
        return enabled

    def set_flag(self, name: str, enabled: bool) -> str:
        url = self._flag_url(name)
        if not isinstance(enabled, bool):
            raise StepError(Step.TOGGLE, "", f"refused flag value {_shown(enabled)}: not a bool")
        return self._reply(Step.TOGGLE, "", "PUT", url, {"enabled": enabled}).text()

    # URLs: every part that comes from a message is checked before it goes into one.

    def _lb_host(self, step: Step, host: str) -> str:
        host = self._host(step, host)
        return f"{self._config.load_balancer}/services/{self._service}/hosts/{host}"

    def _live_url(self) -> str:
        return f"{self._config.load_balancer}/services/{self._service}/live"

    def _agent(self, step: Step, host: str) -> str:
        # Placeholders.fill, not str.format: the template is data from the fleet file.
        base = Placeholders.fill(self._config.agent, {"host": self._host(step, host)})
        return f"{base}/services/{self._service}"

    def _flag_url(self, name: str) -> str:
        if self._config.flags is None:
            raise StepError(Step.TOGGLE, "", "the http driver has no flags URL (driver.flags)")
        if not _valid(_NAME, name):
            raise StepError(Step.TOGGLE, "", f"refused flag name {_shown(name)}")
        return f"{self._config.flags}/flags/{self._service}/{name}"

    @staticmethod
    def _host(step: Step, host: str) -> str:
        if not _valid(_HOST, host):
            raise StepError(step, _shown(host), f"refused host name {_shown(host)}")
        return host

    @staticmethod
    def _version(step: Step, host: str, version: str) -> str:
        if not _valid(_VERSION, version):
            raise StepError(step, host, f"refused version {_shown(version)}")
        return version

    # Requests.

    def _reply(
        self,
        step: Step,
        host: str,
        method: str,
        url: str,
        body: object = None,
        *,
        timeout_s: float | None = None,
    ) -> _Reply:
        """The 2xx answer to a request, tried again as the config says; else a StepError."""
        secret = self._token(step, host)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        timeout_s = timeout_s or self._config.timeout_s
        outcome, tries = self._send(method, url, body, headers, timeout_s)
        if isinstance(outcome, NoAnswer):
            reply = _Reply(step, host, method, safe_url(url), tries, secret, None)
            raise reply.failure(_no_answer(outcome, timeout_s))
        reply = _Reply(step, host, method, safe_url(url), tries, secret, outcome)
        if not 200 <= outcome.status < 300:
            raise reply.failure(reply.status_line())
        return reply

    def _send(
        self, method: str, url: str, body: object, headers: dict[str, str], timeout_s: float
    ) -> tuple[HttpAnswer | NoAnswer, int]:
        """The last outcome, and how many tries it took."""
        tries = 1
        while True:
            outcome: HttpAnswer | NoAnswer
            try:
                outcome = http_request(
                    method, url, timeout_s=timeout_s, json_body=body, headers=headers
                )
            except NoAnswer as error:
                outcome = error
            if tries > self._config.retries or not _worth_retrying(outcome):
                return outcome, tries
            time.sleep(self._config.backoff_s * 2 ** (tries - 1))
            tries += 1

    def _token(self, step: Step, host: str) -> str | None:
        """The bearer token, read on every request so that a rotated one is picked up."""
        name = self._config.token_env
        if name is None:
            return None
        token = os.environ.get(name)
        if not token:
            raise StepError(
                step, host, f"environment variable {name} (the bearer token) is not set, or empty"
            )
        if not _TOKEN.fullmatch(token):
            raise StepError(
                step,
                host,
                f"environment variable {name} holds no usable bearer token"
                " (it has spaces or characters other than visible ASCII)",
            )
        return token


@dataclass(frozen=True)
class _Reply:
    """One request's outcome, and what an error or the timeline says about it."""

    step: Step
    host: str
    method: str
    url: str  # without credentials
    tries: int
    # Never shown: a server may echo the request's headers back, so it is taken out of
    # every text made here, on its way to an error or the timeline.
    secret: str | None
    answer: HttpAnswer | None  # None: no answer at all

    def excerpt(self, limit: int = _REASON_EXCERPT) -> str:
        if self.answer is None:
            return ""
        if not self.secret:
            return self.answer.excerpt(limit)
        # Taken out before the cut, which could otherwise leave the token's first half.
        body = self.answer.body.replace(self.secret.encode(), b"[token]")
        return HttpAnswer(self.answer.status, body).excerpt(limit)

    def status_line(self) -> str:
        if self.answer is None:
            return ""
        try:
            status = f"{self.answer.status} {HTTPStatus(self.answer.status).phrase}"
        except ValueError:  # a status the standard does not name
            status = str(self.answer.status)
        return f"{status}: {self.excerpt()}" if self.excerpt() else status

    def text(self) -> str:
        """For the timeline: what was asked and what came back."""
        again = f" (after {self.tries} tries)" if self.tries > 1 else ""
        return f"{self.method} {self.url} → {self.status_line()}{again}"

    def object(self) -> dict[str, object]:
        """The JSON object answered; anything else is a StepError."""
        try:
            data = self.answer.json() if self.answer else None
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly deep
            data = None
        if not isinstance(data, dict):
            raise self.malformed("a JSON object")
        return data

    def malformed(self, expected: str) -> StepError:
        return self.failure(f"the answer is not {expected}: {self.excerpt() or '(empty)'}")

    def failure(self, problem: str) -> StepError:
        tries = "1 try" if self.tries == 1 else f"{self.tries} tries"
        reason = self._redact(f"{self.method} {self.url}: {problem} ({tries})")
        return StepError(self.step, self.host, reason, self.excerpt(_OUTPUT_EXCERPT))

    def _redact(self, text: str) -> str:
        return text.replace(self.secret, "[token]") if self.secret else text


def _worth_retrying(outcome: HttpAnswer | NoAnswer) -> bool:
    """No answer, the server's trouble (5xx), or too many requests (429): try again."""
    return isinstance(outcome, NoAnswer) or outcome.status >= 500 or outcome.status == 429


def _no_answer(error: NoAnswer, timeout_s: float) -> str:
    cause = error.__cause__
    reason = getattr(cause, "reason", cause)  # urllib wraps connection errors in a URLError
    if isinstance(reason, ConnectionRefusedError):
        return "no answer: connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer: timed out after {timeout_s:g}s"
    return f"no answer: {reason}"


def _valid(adapter: TypeAdapter[str], value: object) -> bool:
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def _shown(value: object) -> str:
    """A value from a message, quoted and cut short: it may be anything, of any length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"
