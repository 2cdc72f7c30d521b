"""One HTTP request with a timeout, for drivers, health checks and metric readers.

Standard library only. Callers decide what a status means and whether to try again;
this module only tells an answer (any status) from no answer at all.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["HttpAnswer", "NoAnswer", "http_request", "safe_url"]

_BODY_LIMIT = 1_000_000  # bytes read from an answer; a health page is not a download


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction.

    urllib would follow it, turning a POST into a GET elsewhere (a drain that "succeeds"
    without draining) and carrying the Authorization header to whatever host it names.
    """

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def excerpt(self, limit: int = 300) -> str:
        text = self.body.decode("utf-8", errors="replace").strip()
        return text if len(text) <= limit else text[:limit] + "…"


class NoAnswer(Exception):
    """The request got no HTTP answer: refused, unreachable, timed out, or cut off."""


def safe_url(url: str) -> str:
    """The URL without user and password, for errors and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def http_request(
    method: str,
    url: str,
    *,
    timeout_s: float,
    json_body: object = None,
    headers: Mapping[str, str] | None = None,
) -> HttpAnswer:
    data = None if json_body is None else json.dumps(json_body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return HttpAnswer(response.status, response.read(_BODY_LIMIT))
    except urllib.error.HTTPError as error:  # an answer, if not a happy one
        with error:
            return HttpAnswer(error.code, error.read(_BODY_LIMIT))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise NoAnswer(f"{method} {safe_url(url)}: no answer ({reason})") from error
