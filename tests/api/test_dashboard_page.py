"""The dashboard page in a real headless Chromium, against canned API answers.

A tiny local HTTP server serves ``orchestrator/api/static/dashboard.html`` at ``/`` and
the four endpoints it polls, checking the bearer token (401 without the right one). Each
group of assertions is one Chromium run; its DOM is read after the page's scripts ran.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.support.browser import Element, parse_dom, rendered_dom, require_chromium, screenshot

PAGE = Path(__file__).resolve().parents[2] / "orchestrator" / "api" / "static" / "dashboard.html"
TOKEN = "secret"

# Would run, or make an element, if the page ever put data in as HTML.
SCRIPT = '<script>document.body.setAttribute("data-pwned", "script")</script>'
IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned', 'img')\">"
HOSTILE = f"{SCRIPT}{IMG} & <b>bold</b>"

Json = Any

STATUS: Json = {
    "light": "red",
    "reasons": [
        {
            "light": "red",
            "what": "release failed",
            "detail": "R-1 could not be put back: web-2 still runs 1.4.0",
        },
        {"light": "amber", "what": "queue backing up", "detail": HOSTILE},
    ],
}

QUEUES: Json = [
    {
        "name": "drover.svc.api",
        "ready": 3,
        "unacked": 1,
        "consumers": 2,
        "oldest_age_s": 12.5,
        "source": "redis",
    },
    {
        "name": "drover.svc.web",
        "ready": 0,
        "unacked": None,
        "consumers": None,
        "oldest_age_s": None,
        "source": "redis",
    },
]


def _component(name: str, version: str | None, state: str, **more: Any) -> Json:
    return {
        "component": name,
        "service": name,
        "version": version,
        "flag": None,
        "enabled": None,
        "strategy": None,
        "previous_version": None,
        "state": state,
        "depends_on": [],
        **more,
    }


def _release(release_id: str, environment: str, state: str, by: str, *components: Json) -> Json:
    return {
        "id": release_id,
        "environment": environment,
        "state": state,
        "reason": HOSTILE if release_id == "R-2" else "weekly",
        "requested_by": by,
        "failure": "",
        "created_at": "2026-11-26T15:17:20.000000+00:00",
        "finished_at": None,
        "attempt": 1,
        "approved_by": None,
        "paused_by": None,
        "aborted_by": None,
        "waiting_for_approval": [],
        "components": list(components),
    }


def _event(at: str, kind: str) -> Json:
    return {"at": f"2026-11-26T15:17:{at}+00:00", "type": kind, "actor": "worker-1", "id": at}


R2 = _release(
    "R-2",
    "staging",
    "running",
    "alice",
    _component("db", "5.1.0", "deployed", previous_version="5.0.0"),
    _component("api", "2.0.0", "deploying", previous_version="1.0.0", depends_on=["db"]),
    _component("checkout", None, "pending", flag="new-cart", enabled=True),
)
R1 = _release("R-1", "production", "rolled_back", "bob", _component("web", "1.4.0", "rolled_back"))

# In commit order, newest last; "at" is the sender's clock and need not increase.
R2_TIMELINE: Json = [
    {**_event("21.000000", "StartRelease"), "actor": "coordinator"},
    {**_event("22.000000", "StepSucceeded"), "service": "db", "step": "deploy", "batch": 1}
    | {"hosts": ["db-1"], "rollback": False, "duration_ms": 1200.0},
    {**_event("23.500000", "GateJudged"), "service": "api", "step": "analyse"}
    | {"gate": "error_rate", "verdict": "inconclusive", "reason": "error rate 2.1% > 1%"},
    {**_event("23.400000", "StepFailed"), "service": "api", "step": "verify", "batch": 2}
    | {"hosts": ["api-3"], "host": "api-3", "rollback": False, "reason": HOSTILE},
]
DETAILS: dict[str, Json] = {
    "R-2": {**R2, "timeline": R2_TIMELINE, "waiting_for": []},
    "R-1": {**R1, "timeline": [_event("10.000000", "ReleaseRolledBack")], "waiting_for": []},
}


@dataclass
class Api:
    """Canned answers, and what the page asked: (path, Authorization header)."""

    down_after: int | None = None  # after this many release details, drop every call
    asked: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    details_answered: int = 0

    def answer(self, path: str, auth: str) -> tuple[int, Json] | None:
        """(code, JSON) for an /api path; None: close the connection without a word."""
        with self.lock:
            self.asked.append((path, auth))
            if self.down_after is not None and self.details_answered >= self.down_after:
                return None
            if auth != f"Bearer {TOKEN}":
                return 401, {"detail": "a known bearer token is needed"}
            route = urlsplit(path).path
            if route == "/api/status":
                return 200, STATUS
            if route == "/api/queues":
                return 200, QUEUES
            if route == "/api/releases":
                return 200, [R2, R1]
            release = DETAILS.get(unquote(route.removeprefix("/api/releases/")))
            self.details_answered += 1
            return (200, release) if release else (404, {"detail": "no such release"})

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.asked]


def _handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/" or self.path.startswith("/?"):
                self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
                return
            if not self.path.startswith("/api/"):
                self._send(404, "text/plain", b"not found")
                return
            answered = api.answer(self.path, self.headers.get("Authorization", ""))
            if answered is None:
                self.close_connection = True  # the API is gone: no status line at all
                return
            code, body = answered
            self._send(code, "application/json", json.dumps(body).encode())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if code == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Served:
    base: str
    api: Api


@contextmanager
def _serve(api: Api) -> Iterator[Served]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="dashboard-api", daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_address[1]}", api)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served() -> Iterator[Served]:
    require_chromium()
    with _serve(Api()) as served:
        yield served


@pytest.fixture(scope="module")
def board() -> Iterator[tuple[Element, Api]]:
    """One run of the page with the right token: the DOM after two polls, and the requests."""
    require_chromium()
    with _serve(Api()) as served:
        dom = parse_dom(rendered_dom(f"{served.base}/#token={TOKEN}", wait_ms=3000))
        yield dom, served.api


def _cells(row: Element) -> list[str]:
    return [cell.text for cell in row.find_all("td")]


# ---- With the right token ----------------------------------------------------------------------


def test_the_light_is_shown_with_every_reason(board: tuple[Element, Api]) -> None:
    dom, _ = board
    assert dom.one("body").attrs["data-view"] == "board"
    assert not dom.by_id("board").hidden
    assert dom.by_id("auth").hidden
    light = dom.by_id("light")
    assert light.attrs["data-light"] == "red"
    assert dom.by_id("light-word").text == "red"
    reasons = dom.by_id("reasons").find_all("li", {"class": "reason"})
    assert [r.attrs["data-light"] for r in reasons] == ["red", "amber"]
    assert reasons[0].one(attrs={"class": "reason-what"}).text == "release failed"
    assert reasons[0].one(attrs={"class": "reason-detail"}).text == (
        "R-1 could not be put back: web-2 still runs 1.4.0"
    )
    assert dom.by_id("conn").attrs["data-conn"] == "ok"


def test_queues_show_depth_in_flight_consumers_and_age(board: tuple[Element, Api]) -> None:
    dom, _ = board
    api_row = dom.one("tr", {"data-queue": "drover.svc.api"})
    assert api_row.attrs["data-ready"] == "3"
    assert api_row.attrs["data-unacked"] == "1"
    assert api_row.attrs["data-consumers"] == "2"
    assert api_row.attrs["data-oldest-age-s"] == "12.5"
    assert _cells(api_row) == ["drover.svc.api (redis)", "3", "1", "2", "12.5 s"]
    web_row = dom.one("tr", {"data-queue": "drover.svc.web"})
    assert _cells(web_row) == ["drover.svc.web (redis)", "0", "?", "?", "?"]


def test_recent_releases_show_their_components_and_progress(board: tuple[Element, Api]) -> None:
    dom, _ = board
    rows = dom.by_id("releases-body").find_all("tr", {"data-release": True})
    assert [r.attrs["data-release"] for r in rows] == ["R-2", "R-1"]  # newest first
    newest = rows[0]
    assert newest.attrs["data-state"] == "running"
    assert newest.attrs["data-selected"] == "true"  # the newest is shown by default
    assert _cells(newest)[:4] == ["R-2", "staging", "running", "alice"]
    listed = {
        li.attrs["data-component"]: (li.attrs["data-state"], li.text)
        for li in newest.find_all("li", {"data-component": True})
    }
    assert listed == {
        "db": ("deployed", "db 5.1.0 deployed"),
        "api": ("deploying", "api 2.0.0 deploying"),
        "checkout": ("pending", "checkout flag new-cart on pending"),
    }
    assert _cells(rows[1])[:4] == ["R-1", "production", "rolled back", "bob"]


def test_the_newest_release_shows_its_components_and_timeline(board: tuple[Element, Api]) -> None:
    dom, api = board
    assert "/api/releases/R-2" in api.paths()
    section = dom.by_id("release")
    assert section.attrs["data-release"] == "R-2"
    assert section.attrs["data-state"] == "running"
    assert dom.by_id("release-title").text == "Release R-2"
    api_row = section.one("tr", {"data-component": "api"})
    assert api_row.attrs["data-state"] == "deploying"
    assert _cells(api_row) == ["api", "api", "1.0.0 → 2.0.0", "fleet default", "db", "deploying"]
    assert section.one("tr", {"data-component": "db"}).attrs["data-state"] == "deployed"

    events = dom.by_id("timeline").find_all("li", {"class": "event"})
    assert [e.attrs["data-type"] for e in events] == [
        "StartRelease",
        "StepSucceeded",
        "GateJudged",
        "StepFailed",
    ]  # as the API gave them (commit order), though the last two's clocks disagree

    def parts(event: Element) -> list[str]:
        names = ("ev-time", "ev-type", "ev-service", "ev-step", "ev-note")
        return [event.one(attrs={"class": name}).text for name in names]

    assert parts(events[1]) == [
        "15:17:22",
        "StepSucceeded",
        "db",
        "deploy batch 1 on db-1",
        "in 1.2 s",
    ]
    assert events[1].attrs["data-batch"] == "1"
    assert parts(events[2])[2:] == [
        "api",
        "analyse",
        "gate error_rate: inconclusive · error rate 2.1% > 1%",
    ]
    assert events[2].attrs["data-verdict"] == "inconclusive"
    assert parts(events[3])[:4] == ["15:17:23", "StepFailed", "api", "verify batch 2 on api-3"]


def test_every_call_carries_the_token_and_the_page_polls(board: tuple[Element, Api]) -> None:
    _, api = board
    with api.lock:
        asked = list(api.asked)
    assert asked, "the page asked the API nothing"
    assert {auth for _, auth in asked} == {f"Bearer {TOKEN}"}
    paths = [path for path, _ in asked]
    assert {"/api/status", "/api/queues", "/api/releases?limit=20"} <= set(paths)
    assert paths.count("/api/status") >= 2  # polled again, 2 s later


def test_html_in_the_data_is_shown_as_text_and_never_run(board: tuple[Element, Api]) -> None:
    dom, _ = board
    body = dom.one("body")
    assert "data-pwned" not in body.attrs
    detail = dom.by_id("reasons").find_all(attrs={"class": "reason-detail"})[1]
    assert detail.children == [HOSTILE]  # one text node: no element was made of it
    note = dom.by_id("timeline").find_all(attrs={"class": "ev-reason"})[-1]
    assert note.children == [HOSTILE]
    reason = dom.by_id("release-meta").find_all("dd")[2]
    assert reason.children == [HOSTILE]
    assert [s for s in dom.find_all("script") if "data-pwned" in s.text] == []
    assert dom.find_all("img") == []
    assert dom.find_all("b") == []


# ---- Other runs --------------------------------------------------------------------------------


def test_a_release_named_in_the_address_is_shown_instead_of_the_newest(served: Served) -> None:
    dom = parse_dom(rendered_dom(f"{served.base}/#token={TOKEN}&release=R-1", wait_ms=1500))
    assert dom.by_id("release").attrs["data-release"] == "R-1"
    assert dom.one("tr", {"data-release": "R-1"}).attrs["data-selected"] == "true"
    assert dom.one("tr", {"data-release": "R-2"}).attrs["data-selected"] == "false"
    row = dom.by_id("release").one("tr", {"data-component": "web"})
    assert row.attrs["data-state"] == "rolled_back"
    assert not dom.by_id("follow").hidden
    assert "/api/releases/R-1" in served.api.paths()
    assert "/api/releases/R-2" not in served.api.paths()


def test_without_a_token_the_page_asks_for_one(served: Served) -> None:
    dom = parse_dom(rendered_dom(f"{served.base}/", wait_ms=1000))
    assert dom.one("body").attrs["data-view"] == "auth"
    assert not dom.by_id("auth").hidden
    assert dom.by_id("board").hidden
    assert dom.one("input", {"id": "token-input"}).attrs["type"] == "password"
    assert dom.by_id("auth-message").text == ""
    assert served.api.paths() == []  # nothing asked without a token


def test_a_wrong_token_is_refused_and_the_form_shown_again(served: Served) -> None:
    dom = parse_dom(rendered_dom(f"{served.base}/#token=wrong", wait_ms=3000))
    assert dom.one("body").attrs["data-view"] == "auth"
    assert not dom.by_id("auth").hidden
    assert dom.by_id("board").hidden
    assert dom.by_id("auth-message").text == "token refused"
    assert dom.by_id("conn").attrs["data-conn"] == "refused"
    asked = served.api.asked
    assert asked and {auth for _, auth in asked} == {"Bearer wrong"}
    assert served.api.paths().count("/api/status") == 1  # refused: no more polling


def test_an_unreachable_api_is_said_and_the_last_data_kept() -> None:
    require_chromium()
    with _serve(Api(down_after=1)) as served:
        dom = parse_dom(rendered_dom(f"{served.base}/#token={TOKEN}", wait_ms=3000))
        conn = dom.by_id("conn")
        assert conn.attrs["data-conn"] == "unreachable"
        assert conn.text.startswith("API unreachable")
        assert "showing data from" in conn.text
        assert dom.by_id("light").attrs["data-light"] == "red"  # what was shown stays
        assert dom.one("tr", {"data-queue": "drover.svc.api"}).attrs["data-ready"] == "3"
        assert len(dom.by_id("timeline").find_all("li", {"class": "event"})) == 4
        assert "stale" in dom.by_id("board").attrs["class"].split()


def test_a_screenshot_is_a_png(served: Served, tmp_path: Path) -> None:
    png = screenshot(f"{served.base}/#token={TOKEN}", tmp_path / "dashboard.png", wait_ms=1500)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (1280, 1600)


# ---- Without a browser -------------------------------------------------------------------------


def test_the_content_security_policy_allows_the_page_script() -> None:
    """The CSP names the one inline script by its hash: a changed script needs a new hash."""
    html = PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    assert len(scripts) == 1, "the page has one inline script, and no other"
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert policy is not None
    assert f"script-src 'sha256-{digest}'" in policy.group(1), (
        f"put script-src 'sha256-{digest}' in the page's Content-Security-Policy"
    )


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = PAGE.read_text(encoding="utf-8")
    assert re.findall(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html, flags=re.I) == []
    # Data goes in by textContent and setAttribute only: nothing in the script parses HTML.
    script = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)[0]
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", script, flags=re.DOTALL)
    for parser in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert parser not in code
