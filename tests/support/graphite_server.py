"""A small, real Graphite render API for tests: ``GET /render?target=…&format=json``.

It serves what Graphite serves, as far as Drover reads it:

* ``target`` (repeatable): a series registered with :meth:`GraphiteServer.add` by its
  exact text (``sumSeries(stats.checkout.*.errors)`` included), or else a plain metric
  path whose wildcards (``*``, ``?``, ``[…]``, ``{a,b}``, never crossing a dot) match
  registered paths, one series each; a target matching nothing gives no series, as
  Graphite answers ``[]`` rather than an error;
* ``from`` / ``until``: epoch seconds, ``now`` or relative (``-5min``, ``-2h``, ``-30s``);
  a point is returned when ``from < timestamp <= until``, as Graphite's whisper reads;
* ``format=json`` only (Graphite's default is a PNG, which no test wants).

It can be told to answer an error status, a body that is not the render API's, or to
be slow; it records every request it got.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["GraphiteServer", "RenderRequest"]

Point = tuple[float, float | None]  # (timestamp, value); None is Graphite's null

_UNITS: Final = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86_400,
    "day": 86_400,
    "days": 86_400,
    "w": 604_800,
    "week": 604_800,
    "weeks": 604_800,
}
_RELATIVE: Final = re.compile(r"^-(\d+)([a-z]+)$")


@dataclass(frozen=True)
class RenderRequest:
    path: str
    query: str  # as sent, still URL-encoded
    params: dict[str, list[str]]  # decoded
    headers: dict[str, str]


class GraphiteServer:
    """``with GraphiteServer() as graphite:`` serves on ``graphite.url`` until the block ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, list[Point]] = {}
        self._requests: list[RenderRequest] = []
        self._status = 200
        self._body: bytes | None = None  # instead of the render API's answer
        self._delay_s = 0.0
        self._closing = threading.Event()  # wakes a slow answer when the server stops
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # A short poll keeps shutdown quick: it waits for the loop's next look.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # What tests set up.

    def add(self, target: str, points: Iterable[Point]) -> None:
        with self._lock:
            self._series.setdefault(target, []).extend(points)

    def replace(self, target: str, points: Iterable[Point]) -> None:
        """The target's points from now on are these, and only these."""
        with self._lock:
            self._series[target] = list(points)

    def answer(self, status: int = 200, body: str | bytes | None = None) -> None:
        """Answer every request with ``status`` and, if given, ``body`` instead of data."""
        with self._lock:
            self._status = status
            self._body = body.encode() if isinstance(body, str) else body

    def slow(self, delay_s: float) -> None:
        with self._lock:
            self._delay_s = delay_s

    @property
    def requests(self) -> list[RenderRequest]:
        with self._lock:
            return list(self._requests)

    # What the handler asks.

    def _respond(self, request: RenderRequest) -> tuple[int, bytes]:
        with self._lock:
            self._requests.append(request)
            status, body, delay_s = self._status, self._body, self._delay_s
        if delay_s:
            self._closing.wait(delay_s)
        if body is not None or status != 200:
            return status, body if body is not None else HTTPStatus(status).phrase.encode()
        if request.path != "/render":
            return 404, b"Not Found"
        try:
            return 200, json.dumps(self._render(request.params)).encode()
        except ValueError as exc:  # Graphite answers a bad parameter with 400 and a text
            return 400, str(exc).encode()

    def _render(self, params: dict[str, list[str]]) -> list[dict[str, object]]:
        if params.get("format", [""])[0] != "json":
            raise ValueError("this test server renders format=json only")
        now = time.time()
        start = _moment(params.get("from", ["-24h"])[0], now)
        end = _moment(params.get("until", ["now"])[0], now)
        with self._lock:
            series = [s for target in params.get("target", []) for s in self._matching(target)]
        return [
            {
                "target": name,
                "tags": {"name": name},
                "datapoints": [[v, int(t)] for t, v in sorted(points) if start < t <= end],
            }
            for name, points in series
        ]

    def _matching(self, target: str) -> list[tuple[str, list[Point]]]:
        if target in self._series:
            return [(target, self._series[target])]
        pattern = _glob(target)
        return [(name, points) for name, points in self._series.items() if pattern.match(name)]


def _moment(text: str, now: float) -> float:
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative and relative.group(2) in _UNITS:
        return now - int(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(int(text))
    except ValueError:
        raise ValueError(f"invalid time {text!r}") from None


def _glob(path: str) -> re.Pattern[str]:
    """Graphite's path wildcards as a regular expression; none of them crosses a dot."""
    out = []
    for part in re.split(r"(\*|\?|\[[^\]]*\]|\{[^}]*\})", path):
        if part == "*":
            out.append(r"[^.]*")
        elif part == "?":
            out.append(r"[^.]")
        elif part.startswith("[") and part.endswith("]"):
            out.append(part)
        elif part.startswith("{") and part.endswith("}"):
            out.append("(?:" + "|".join(re.escape(a) for a in part[1:-1].split(",")) + ")")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


def _handler(graphite: GraphiteServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            request = RenderRequest(
                path=parts.path,
                query=parts.query,
                params=parse_qs(parts.query, keep_blank_values=True),
                headers=dict(self.headers.items()),
            )
            status, body = graphite._respond(request)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except ConnectionError:
                pass  # the client gave up waiting (a timeout test): nobody to tell

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: pytest shows what a test asserts, not an access log

    return Handler
