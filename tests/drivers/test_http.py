"""The HTTP driver against a real load balancer, host agents and flag service (real sockets)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from orchestrator.fleet.drivers import HttpDriverConfig
from orchestrator.vocabulary import Step
from tests.support.lb_server import LoadBalancer, loopback_hosts
from workers.drivers import Driver, StepError
from workers.drivers.http import HttpDriver

SERVICE = "web"
HOST, OTHER = loopback_hosts(2)
TOKEN_ENV = "DROVER_TEST_LB_TOKEN"
SECRET = "s3cret-token-value"


@pytest.fixture
def lb() -> Iterator[LoadBalancer]:
    with LoadBalancer({SERVICE: [HOST, OTHER]}, version="1.0") as server:
        yield server


def driver(lb: LoadBalancer, **settings: object) -> HttpDriver:
    # Small timeouts and backoff: a failing test must still be a fast one.
    config = HttpDriverConfig.model_validate(
        lb.driver_settings(**{"timeout_s": 2, "retries": 2, "backoff_s": 0.01, **settings})
    )
    return HttpDriver(config, environment="test", service=SERVICE)


def failure(action: Callable[[], object]) -> StepError:
    with pytest.raises(StepError) as caught:
        action()
    return caught.value


def test_it_is_a_driver_of_a_named_service(lb: LoadBalancer) -> None:
    http: Driver = driver(lb)  # mypy checks the protocol here
    assert http.live_colour() is None
    config = HttpDriverConfig.model_validate(lb.driver_settings())
    with pytest.raises(ValueError, match="not a valid service name"):
        HttpDriver(config, environment="test", service="../web")


def test_a_full_cycle_changes_the_servers_state(lb: LoadBalancer) -> None:
    http = driver(lb)
    assert http.current_version(HOST) == "1.0"

    text = http.drain(HOST)
    assert lb.host(SERVICE, HOST).state == "drained"
    assert text.startswith(f"POST {lb.lb_url}/services/web/hosts/{HOST}/drain → 200 OK")
    assert http.in_flight(HOST) == 0
    assert "200 OK" in http.deploy(HOST, "2.0")
    assert lb.host(SERVICE, HOST).version == "2.0"
    assert http.current_version(HOST) == "2.0"
    assert '"healthy": true' in http.verify(HOST, "2.0")
    http.undrain(HOST)

    assert lb.host(SERVICE, HOST).state == "serving"
    assert lb.host(SERVICE, OTHER).version == "1.0"  # the other host was left alone
    assert http.current_versions([OTHER, HOST]) == {OTHER: "1.0", HOST: "2.0"}
    assert [(e.kind, e.host, e.detail) for e in lb.events()] == [
        ("drain", HOST, ""),
        ("deploy", HOST, "2.0"),
        ("undrain", HOST, ""),
    ]
    assert lb.most_not_serving(SERVICE) == 1


def test_doing_it_again_changes_nothing(lb: LoadBalancer) -> None:
    http = driver(lb)
    http.drain(HOST)
    http.drain(HOST)
    http.deploy(HOST, "1.0")  # what it already runs
    assert [e.kind for e in lb.events()] == ["drain"]


def test_in_flight_requests_finish_while_draining(lb: LoadBalancer) -> None:
    lb.hold_requests(SERVICE, HOST, 3, finish_every_s=0.1)
    http = driver(lb)
    assert http.in_flight(HOST) == 3  # serving: they keep coming
    http.drain(HOST)
    seen = [http.in_flight(HOST)]
    deadline = time.monotonic() + 5
    while seen[-1] and time.monotonic() < deadline:
        time.sleep(0.01)
        seen.append(http.in_flight(HOST))
    assert seen[-1] == 0
    assert seen == sorted(seen, reverse=True)
    assert set(seen) & {1, 2}  # they went one by one, not all at once
    assert lb.host(SERVICE, HOST).state == "drained"


def test_verify_fails_for_an_unhealthy_host(lb: LoadBalancer) -> None:
    lb.set_health(SERVICE, HOST, healthy=False)
    error = failure(lambda: driver(lb).verify(HOST, "1.0"))
    assert (error.step, error.host) == (Step.VERIFY, HOST)
    assert "503 Service Unavailable" in error.reason
    assert '"healthy": false' in error.reason
    assert "(3 tries)" in error.reason  # a 503 may pass: the host may still be starting


def test_verify_fails_for_a_2xx_that_says_unhealthy(lb: LoadBalancer) -> None:
    lb.answer_next(1, 200, {"version": "1.0", "healthy": False}, host=HOST)
    error = failure(lambda: driver(lb).verify(HOST, "1.0"))
    assert error.step == Step.VERIFY
    assert "the host is not healthy" in error.reason


def test_verify_fails_for_another_version(lb: LoadBalancer) -> None:
    error = failure(lambda: driver(lb).verify(HOST, "2.0"))
    assert (error.step, error.host) == (Step.VERIFY, HOST)
    assert "the host runs '1.0', not '2.0'" in error.reason


def test_a_slow_host_times_out_after_every_try(lb: LoadBalancer) -> None:
    lb.slow(HOST, 0.5)
    error = failure(lambda: driver(lb, timeout_s=0.1, deploy_timeout_s=0.1).deploy(HOST, "2.0"))
    assert (error.step, error.host) == (Step.DEPLOY, HOST)
    assert "no answer: timed out after 0.1s (3 tries)" in error.reason
    assert len(lb.requests(HOST)) == 3


def test_a_refused_connection_is_a_clear_error(lb: LoadBalancer) -> None:
    lb.refuse(HOST)
    error = failure(lambda: driver(lb).current_version(HOST))
    assert (error.step, error.host) == (Step.DEPLOY, HOST)
    assert error.reason.endswith("no answer: connection refused (3 tries)")
    assert lb.requests(HOST) == []
    lb.listen(HOST)
    assert driver(lb).current_version(HOST) == "1.0"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_the_servers_trouble_is_tried_again_with_a_doubling_backoff(
    lb: LoadBalancer, status: int
) -> None:
    lb.answer_next(2, status)
    started = time.monotonic()
    text = driver(lb, backoff_s=0.05).drain(HOST)
    assert time.monotonic() - started >= 0.05 + 0.1
    assert text.endswith("(after 3 tries)")
    assert len(lb.requests()) == 3
    assert lb.host(SERVICE, HOST).state == "drained"


def test_not_found_is_not_tried_again(lb: LoadBalancer) -> None:
    error = failure(lambda: driver(lb).drain("127.0.0.99"))  # a host the balancer lacks
    assert (error.step, error.host) == (Step.DRAIN, "127.0.0.99")
    assert "404 Not Found" in error.reason
    assert "no POST /services/web/hosts/127.0.0.99/drain" in error.reason  # the excerpt
    assert "(1 try)" in error.reason
    assert len(lb.requests()) == 1


def test_a_bad_request_is_not_tried_again(lb: LoadBalancer) -> None:
    lb.answer_next(1, 400, {"error": "that colour is not ready"})
    error = failure(lambda: driver(lb).switch("green"))
    assert (error.step, error.host) == (Step.SWITCH, "")
    assert f"PUT {lb.lb_url}/services/web/live: 400 Bad Request" in error.reason
    assert "that colour is not ready" in error.reason
    assert "that colour is not ready" in error.output
    assert len(lb.requests()) == 1


@pytest.mark.parametrize(
    ("call", "step"),
    [
        (lambda d: d.drain("../admin"), Step.DRAIN),
        (lambda d: d.undrain("a host"), Step.UNDRAIN),
        (lambda d: d.in_flight(""), Step.DRAIN),
        (lambda d: d.current_version("evil.com/x?"), Step.DEPLOY),
        (lambda d: d.deploy(HOST, "2.0\nX-Injected: 1"), Step.DEPLOY),
        (lambda d: d.deploy("h\r\nHost: x", "2.0"), Step.DEPLOY),
        (lambda d: d.verify(HOST, "../1.0"), Step.VERIFY),
        (lambda d: d.verify(HOST, 2), Step.VERIFY),
        (lambda d: d.switch("red"), Step.SWITCH),
        (lambda d: d.flag("../../admin"), Step.TOGGLE),
        (lambda d: d.set_flag("Upper", True), Step.TOGGLE),
        (lambda d: d.set_flag("beta", "yes"), Step.TOGGLE),
    ],
    ids=[
        "drain-path",
        "undrain-space",
        "in_flight-empty",
        "current_version-url",
        "deploy-header-in-version",
        "deploy-header-in-host",
        "verify-path",
        "verify-not-a-str",
        "switch-red",
        "flag-path",
        "set_flag-upper",
        "set_flag-not-a-bool",
    ],
)
def test_bad_names_from_a_message_are_refused_before_any_request(
    lb: LoadBalancer, call: Callable[[HttpDriver], object], step: Step
) -> None:
    error = failure(lambda: call(driver(lb)))
    assert error.step == step
    assert "refused" in error.reason
    assert lb.requests() == []


def test_a_malformed_answer_is_a_clear_error(lb: LoadBalancer) -> None:
    lb.answer_next(1, 200, "<html>maintenance</html>")
    error = failure(lambda: driver(lb).in_flight(HOST))
    assert error.step == Step.DRAIN
    assert "the answer is not a JSON object: <html>maintenance</html>" in error.reason
    lb.answer_next(1, 200, {"in_flight": "three"})
    error = failure(lambda: driver(lb).in_flight(HOST))
    assert 'the answer is not {"in_flight": <a count, 0 or more>}' in error.reason


def test_the_bearer_token_is_sent_and_required(monkeypatch: pytest.MonkeyPatch) -> None:
    with LoadBalancer({SERVICE: [HOST]}, token=SECRET) as lb:
        monkeypatch.setenv(TOKEN_ENV, SECRET)
        assert driver(lb, token_env=TOKEN_ENV).drain(HOST)
        assert lb.host(SERVICE, HOST).state == "drained"

        error = failure(lambda: driver(lb).undrain(HOST))  # no token_env: no token sent
        assert "401 Unauthorized" in error.reason
        assert "(1 try)" in error.reason

        monkeypatch.setenv(TOKEN_ENV, "wrong-token")
        error = failure(lambda: driver(lb, token_env=TOKEN_ENV).undrain(HOST))
        assert "401 Unauthorized" in error.reason
        assert "wrong-token" not in f"{error} {error.output}"


def test_a_missing_token_variable_is_named_and_nothing_is_sent(
    lb: LoadBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    error = failure(lambda: driver(lb, token_env=TOKEN_ENV).drain(HOST))
    assert (error.step, error.host) == (Step.DRAIN, HOST)
    assert TOKEN_ENV in error.reason
    assert lb.requests() == []


def test_a_token_that_could_split_the_header_is_refused_unshown(
    lb: LoadBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET + "\n")
    error = failure(lambda: driver(lb, token_env=TOKEN_ENV).drain(HOST))
    assert "no usable bearer token" in error.reason
    assert SECRET not in f"{error} {error.output}"
    assert lb.requests() == []


def test_a_token_echoed_by_the_server_never_reaches_the_error_or_timeline(
    lb: LoadBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    http = driver(lb, token_env=TOKEN_ENV)
    lb.answer_next(1, 403, {"error": f"Bearer {SECRET} is not allowed here"})
    error = failure(lambda: http.switch("blue"))
    assert "Bearer [token] is not allowed here" in error.reason
    assert SECRET not in f"{error} {error.output}"
    lb.answer_next(1, 200, {"you_sent": SECRET})
    assert SECRET not in http.switch("blue")
    lb.answer_next(1, 400, {"error": "x" * 180 + SECRET})  # the excerpt's cut is in it
    error = failure(lambda: http.switch("blue"))
    assert SECRET[:6] not in f"{error} {error.output}"


def test_live_colour_and_switch(lb: LoadBalancer) -> None:
    http = driver(lb)
    assert http.live_colour() is None  # blue/green never used
    assert "200 OK" in http.switch("green")
    assert http.live_colour() == "green"
    http.switch("green")
    http.switch("blue")
    assert lb.live(SERVICE) == "blue"
    assert [e.detail for e in lb.events("switch")] == ["green", "blue"]
    lb.answer_next(1, 200, {"colour": "purple"})
    error = failure(http.live_colour)
    assert (error.step, error.host) == (Step.SWITCH, "")
    assert '"purple"' in error.reason


def test_flags(lb: LoadBalancer) -> None:
    http = driver(lb)
    error = failure(lambda: http.flag("new-checkout"))  # never set: the service lacks it
    assert (error.step, error.host) == (Step.TOGGLE, "")
    assert "404 Not Found" in error.reason
    http.set_flag("new-checkout", True)
    assert http.flag("new-checkout") is True
    assert lb.flag(SERVICE, "new-checkout") is True
    http.set_flag("new-checkout", False)
    assert http.flag("new-checkout") is False
    assert [e.detail for e in lb.events("flag")] == ["new-checkout=True", "new-checkout=False"]


def test_flags_need_a_flags_url(lb: LoadBalancer) -> None:
    error = failure(lambda: driver(lb, flags=None).set_flag("beta", True))
    assert error.step == Step.TOGGLE
    assert "driver.flags" in error.reason
    assert lb.requests() == []


def test_several_hosts_out_at_once_are_seen(lb: LoadBalancer) -> None:
    http = driver(lb)
    http.drain(HOST)
    http.drain(OTHER)
    http.undrain(HOST)
    http.undrain(OTHER)
    assert lb.most_not_serving(SERVICE) == 2
