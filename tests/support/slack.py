"""Slack's side of chatops, for tests: signed slash commands, and a response_url that records.

    with ResponseUrls() as urls:
        body = slash_form("status", user_id="U1", user_name="alice",
                          trigger_id="t-1", response_url=urls.url("t-1"))
        status, answer = post_slash(api_url, body, signed(SECRET, body))
        urls.wait_for("t-1", lambda posts: len(posts) >= 1)

Every ``response_url`` is ``http://127.0.0.1:PORT/<name>``: one name per slash command,
so what was posted for each command is kept apart.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from orchestrator.chatops.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["Post", "ResponseUrls", "post_slash", "signed", "slash_form", "texts"]

FORM_TYPE = "application/x-www-form-urlencoded"


def slash_form(
    text: str,
    *,
    user_id: str,
    user_name: str,
    trigger_id: str,
    response_url: str,
    team_id: str = "T0DROVER",
    command: str = "/drover",
) -> bytes:
    """The body Slack posts for a slash command, with the fields Drover reads."""
    fields = {
        "token": "deprecated-verification-token",  # Slack still sends it; Drover ignores it
        "team_id": team_id,
        "team_domain": "drover-tests",
        "channel_id": "C0RELEASES",
        "channel_name": "releases",
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "response_url": response_url,
        "trigger_id": trigger_id,
    }
    return urlencode(fields).encode()


def signed(secret: str, body: bytes, *, at: float | None = None) -> dict[str, str]:
    """The headers Slack signs ``body`` with, at ``at`` (now by default)."""
    timestamp = str(int(time.time() if at is None else at))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "Content-Type": FORM_TYPE,
    }


def post_slash(
    url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 30
) -> tuple[int, Any]:
    """POST as Slack does; the status and the JSON answer (None if it is not JSON)."""
    request = urllib.request.Request(url, data=body, method="POST")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, _json(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _json(error.read())


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class Post:
    """One POST a response_url received, and what it answered."""

    name: str  # the response_url's path, without the leading "/"
    body: Any  # the JSON posted (None if it was not JSON)
    status: int  # what the recorder answered
    seq: int  # arrival order across every response_url


class ResponseUrls(AbstractContextManager["ResponseUrls"]):
    """A local HTTP server standing in for Slack's response_url endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._received: list[Post] = []
        self._failures: dict[str, list[int]] = {}  # name -> statuses to answer first
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ResponseUrls:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, name: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{name}"

    def fail_first(self, name: str, *statuses: int) -> None:
        """Answer the next posts to ``name`` with these statuses (then 200 again)."""
        with self._lock:
            self._failures[name] = list(statuses)

    def posts(self, name: str) -> list[Post]:
        """The posts ``name`` accepted (answered 200), in arrival order."""
        with self._lock:
            return [p for p in self._received if p.name == name and p.status == 200]

    def attempts(self, name: str) -> list[Post]:
        """Every post to ``name``, refused ones too."""
        with self._lock:
            return [p for p in self._received if p.name == name]

    def wait_for(
        self, name: str, done: Callable[[list[Post]], bool], timeout_s: float = 30
    ) -> list[Post]:
        """The accepted posts to ``name`` once ``done`` says they are enough."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                accepted = [p for p in self._received if p.name == name and p.status == 200]
                if done(accepted):
                    return accepted
                left = deadline - time.monotonic()
                if left <= 0:
                    texts = [p.body for p in accepted]
                    raise AssertionError(f"response_url {name}: not there in time; got {texts}")
                self._changed.wait(left)

    def _record(self, name: str, body: Any) -> int:
        with self._changed:
            pending = self._failures.get(name, [])
            status = pending.pop(0) if pending else 200
            self._received.append(Post(name, body, status, len(self._received)))
            self._changed.notify_all()
            return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        urls = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = _json(self.rfile.read(length))
                status = urls._record(self.path.lstrip("/"), body)
                answer = b"ok" if status == 200 else b"try later"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        return Handler


def texts(posts: list[Post]) -> Iterator[str]:
    """The ``text`` of each post."""
    for post in posts:
        yield str(post.body.get("text", "")) if isinstance(post.body, dict) else ""
