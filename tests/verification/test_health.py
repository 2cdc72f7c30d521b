"""Health checks against a real local HTTP server and real commands; only sleeps are recorded."""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.checks import HealthChecks
from orchestrator.vocabulary import Step
from workers.drivers import StepError
from workers.verification.health import check_health


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = "ok"
    delay_s: float = 0.0


class HealthPage:
    """A service's health page: answers as scripted, then ``Answer()``; records each path."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        # A short poll keeps shutdown quick: it waits for the loop's next look.
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        serve.start()

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._script = list(answers)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _next(self, path: str) -> Answer:
        with self._lock:
            self.hits.append(path)
            return self._script.pop(0) if self._script else Answer()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = page._next(self.path)
                if answer.delay_s:
                    page._closing.wait(answer.delay_s)
                body = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # the check gave up waiting

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class Sleeps:
    """A ``sleep`` that returns at once and records each wait, and how many calls preceded it."""

    def __init__(self, page: HealthPage | None = None) -> None:
        self.page = page
        self.waits: list[tuple[float, int]] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append((seconds, len(self.page.hits) if self.page else 0))

    @property
    def seconds(self) -> list[float]:
        return [s for s, _ in self.waits]


@pytest.fixture
def page() -> Iterator[HealthPage]:
    served = HealthPage()
    yield served
    served.close()


def checks(*items: dict[str, Any], **settings: Any) -> HealthChecks:
    return HealthChecks.model_validate({"checks": list(items), **settings})


def http(url: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "http", "url": url, **fields}


def command(*argv: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "command", "argv": list(argv), **fields}


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def verify(health: HealthChecks, sleep: Sleeps) -> str:
    return check_health(
        health,
        host="web-1",
        service="checkout",
        environment="prod",
        version="1.2.3",
        sleep=sleep,
    )


def refused_url() -> str:
    # A port that was just free: nothing listens there, so a connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


# HTTP checks


def test_a_healthy_page_passes_at_the_first_try_with_placeholders_filled(
    page: HealthPage,
) -> None:
    url = page.url + "/health/{service}/{host}?env={environment}&v={version}"
    text = verify(checks(http(url)), Sleeps(page))

    assert page.hits == ["/health/checkout/web-1?env=prod&v=1.2.3"]
    assert "passed (1 try)" in text
    assert "/health/checkout/web-1" in text


def test_a_check_that_recovers_after_two_failures_passes_with_three_retries(
    page: HealthPage,
) -> None:
    page.script(Answer(503, "warming up"), Answer(503, "warming up"))
    sleep = Sleeps(page)

    text = verify(checks(http(page.url + "/health"), retries=3, interval_s=0.5), sleep)

    assert "passed (3 tries)" in text
    assert len(page.hits) == 3
    assert sleep.waits == [(0.5, 1), (0.5, 2)]  # between tries, not after the last


def test_the_same_check_fails_with_one_retry_saying_why_and_after_how_many_tries(
    page: HealthPage,
) -> None:
    page.script(Answer(503, "warming up"), Answer(503, "warming up"))
    sleep = Sleeps(page)

    with pytest.raises(StepError) as caught:
        verify(checks(http(page.url + "/health"), retries=1, interval_s=0.5), sleep)

    error = caught.value
    assert (error.step, error.host) == (Step.VERIFY, "web-1")
    assert "failed (2 tries)" in error.reason
    assert "answered 503, expected 200" in error.reason
    assert "warming up" in error.reason
    assert error.output == "warming up"
    assert len(page.hits) == 2
    assert sleep.seconds == [0.5]


def test_a_wrong_body_fails_with_an_excerpt_of_what_came(page: HealthPage) -> None:
    page.script(Answer(200, "status: starting"))

    with pytest.raises(StepError) as caught:
        verify(checks(http(page.url + "/health", body="status: ok"), retries=0), Sleeps())

    assert "lacks 'status: ok'" in caught.value.reason
    assert "status: starting" in caught.value.reason
    assert "(1 try)" in caught.value.reason


def test_any_of_the_accepted_statuses_passes(page: HealthPage) -> None:
    page.script(Answer(202, "accepted, all good"))

    text = verify(checks(http(page.url + "/health", status=[200, 202], body="good")), Sleeps())

    assert "passed (1 try)" in text


def test_a_slow_page_times_out(page: HealthPage) -> None:
    page.script(Answer(200, "ok", delay_s=3))
    began = time.monotonic()

    with pytest.raises(StepError) as caught:
        verify(checks(http(page.url + "/health", timeout_s=0.2), retries=0), Sleeps())

    assert "no answer" in caught.value.reason
    assert "timed out" in caught.value.reason
    assert time.monotonic() - began < 2


def test_a_refused_connection_fails_after_every_try() -> None:
    sleep = Sleeps()

    url = refused_url()

    with pytest.raises(StepError) as caught:
        verify(checks(http(url), retries=2, interval_s=1), sleep)

    assert caught.value.reason.startswith(f"GET {url} failed (3 tries): no answer (")
    assert "refused" in caught.value.reason
    assert sleep.seconds == [1, 1]


def test_settle_time_is_waited_before_the_first_call(page: HealthPage) -> None:
    sleep = Sleeps(page)

    verify(checks(http(page.url + "/health"), settle_s=30), sleep)

    assert sleep.waits == [(30, 0)]
    assert len(page.hits) == 1


def test_checks_run_in_order_and_the_first_unhealthy_one_fails_the_host(
    page: HealthPage, tmp_path: Path
) -> None:
    failing = script(tmp_path, "never.sh", "exit 1\n")
    after = page.url + "/never-asked"

    with pytest.raises(StepError) as caught:
        verify(
            checks(http(page.url + "/health"), command(failing), http(after), retries=0), Sleeps()
        )

    assert caught.value.reason.startswith(f"command {failing} failed")
    assert page.hits == ["/health"]


def test_the_text_says_which_checks_passed(page: HealthPage, tmp_path: Path) -> None:
    fine = script(tmp_path, "fine.sh", "exit 0\n")

    text = verify(checks(http(page.url + "/health"), command(fine)), Sleeps())

    assert text == f"healthy: GET {page.url}/health passed (1 try); command {fine} passed (1 try)"


# Command checks


def test_a_command_that_exits_non_zero_fails_with_its_code_and_output(tmp_path: Path) -> None:
    check = script(tmp_path, "db.sh", 'echo "database not ready"\nexit 3\n')

    with pytest.raises(StepError) as caught:
        verify(checks(command(check), retries=0), Sleeps())

    assert "exited with 3" in caught.value.reason
    assert "database not ready" in caught.value.output


def test_command_arguments_get_the_placeholders_and_no_shell(tmp_path: Path) -> None:
    seen = tmp_path / "args"
    check = script(tmp_path, "args.sh", f'printf "%s\\n" "$@" > {seen}\n')

    verify(checks(command(check, "{host}", "v={version}", "{environment} $HOME;")), Sleeps())

    assert seen.read_text().splitlines() == ["web-1", "v=1.2.3", "prod $HOME;"]


def test_a_command_that_recovers_passes_with_enough_retries(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.write_text("0")
    # Fails twice, then passes: the count of calls lives in a file between runs.
    check = script(
        tmp_path,
        "recovers.sh",
        f'n=$(($(cat {count}) + 1)); echo $n > {count}; [ "$n" -ge 3 ]\n',
    )

    assert "passed (3 tries)" in verify(checks(command(check), retries=3), Sleeps())
    count.write_text("0")
    with pytest.raises(StepError, match=r"failed \(2 tries\): exited with 1"):
        verify(checks(command(check), retries=1), Sleeps())


def test_a_command_that_hangs_is_ended_at_its_timeout(tmp_path: Path) -> None:
    check = script(tmp_path, "hangs.sh", "sleep 10\n")
    began = time.monotonic()

    with pytest.raises(StepError) as caught:
        verify(checks(command(check, timeout_s=0.3), retries=0), Sleeps())

    assert "timed out after 0.3 s" in caught.value.reason
    assert time.monotonic() - began < 3


def test_a_command_that_cannot_start_fails(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="cannot run"):
        verify(checks(command(str(tmp_path / "missing.sh")), retries=0), Sleeps())
