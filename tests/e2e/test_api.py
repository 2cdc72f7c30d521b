"""``drover api`` as a real process over real HTTP, in front of a real cluster on Redis:
tokens, what each may do, submitting and deciding, and the OpenAPI document."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.api.tokens import new_token
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import FIRST_FAILURE, SUCCESS
from tests.support.browser import parse_dom, rendered_dom, require_chromium
from tests.support.ports import free_port

pytestmark = pytest.mark.broker

SCOPES = {
    "reader": ["read"],
    "pipeline": ["read", "deploy:staging"],
    "db-only": ["read", "deploy:staging/db"],
    "oncall": ["read", "operate:staging", "approve:staging"],
}


@dataclass
class Api:
    url: str
    tokens: dict[str, str]  # name -> the token itself
    cluster: Cluster

    def call(
        self, method: str, path: str, *, as_: str | None = None, body: object = None, **headers: str
    ) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, method=method)
        if as_ is not None:
            request.add_header("Authorization", f"Bearer {self.tokens.get(as_, as_)}")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def until_ended(self, release_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            code, view = self.call("GET", f"/api/releases/{release_id}", as_="reader")
            if code == 200 and view["finished_at"]:
                return dict(view)
            time.sleep(0.2)
        raise AssertionError(f"{release_id} did not end")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("api")
    made = {name: new_token(name, scopes) for name, scopes in SCOPES.items()}
    tokens_file = folder / "tokens.yaml"
    entries = [entry.model_dump() for _, entry in made.values()]
    tokens_file.write_text(yaml.safe_dump({"tokens": entries}))
    port = free_port()
    with running_cluster("redis", folder, workers={"worker": ("all",)}) as cluster:
        cluster.start("api", "api", "--port", str(port), api_tokens=str(tokens_file))
        found = Api(f"http://127.0.0.1:{port}", {n: t for n, (t, _) in made.items()}, cluster)
        _wait_until_listening(found)
        yield found


def _wait_until_listening(api: Api) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            api.call("GET", "/openapi.json")
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"drover api did not start; logs in {api.cluster.logs}")


def release_body(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def test_the_openapi_document_describes_every_call_and_its_token(api: Api) -> None:
    code, document = api.call("GET", "/openapi.json")

    assert code == 200
    paths = document["paths"]
    assert {"/api/status", "/api/queues", "/api/releases", "/api/releases/{release_id}"} <= set(
        paths
    )
    assert "post" in paths["/api/releases/{release_id}/approve"]
    schemes = document["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())


@pytest.mark.parametrize("token", [None, "not-a-known-token"])
def test_without_a_known_token_every_call_is_refused(api: Api, token: str | None) -> None:
    for method, path in [
        ("GET", "/api/status"),
        ("GET", "/api/releases"),
        ("POST", "/api/releases"),
    ]:
        code, _ = api.call(method, path, as_=token, body={} if method == "POST" else None)
        assert code == 401, (method, path)


def test_the_light_and_the_queues_for_a_reader(api: Api) -> None:
    code, found = api.call("GET", "/api/status", as_="reader")
    assert code == 200 and found["light"] in ("green", "amber", "red")

    code, rows = api.call("GET", "/api/queues", as_="reader")
    assert code == 200
    assert {"name", "ready", "unacked", "consumers", "oldest_age_s", "source"} <= set(rows[0])


def test_a_reader_may_not_deploy_and_a_token_for_one_service_not_another(
    api: Api, tmp_path: Path
) -> None:
    body = release_body(SUCCESS.write(tmp_path))

    assert api.call("POST", "/api/releases", as_="reader", body=body)[0] == 403
    code, answer = api.call("POST", "/api/releases", as_="db-only", body=body)
    assert code == 403 and "may not deploy in staging" in answer["detail"]


def test_a_pipeline_submits_and_follows_a_release_and_a_retried_call_starts_nothing_new(
    api: Api, tmp_path: Path
) -> None:
    body = release_body(SUCCESS.write(tmp_path))

    code, first = api.call(
        "POST", "/api/releases", as_="pipeline", body=body, Idempotency_Key="build-42"
    )
    again = api.call("POST", "/api/releases", as_="pipeline", body=body, Idempotency_Key="build-42")

    assert code == 202 and first["created"] is True
    assert again == (202, {"id": first["id"], "created": False})
    ended = api.until_ended(first["id"])
    assert ended["state"] == "succeeded"
    assert ended["requested_by"] == "api:pipeline"


def test_an_invalid_release_is_refused_naming_the_field(api: Api) -> None:
    body = {"environment": "staging", "components": [{"service": "nope", "version": "1.0"}]}

    code, answer = api.call("POST", "/api/releases", as_="pipeline", body=body)

    assert code == 422
    assert {
        "path": "components[0].service",
        "reason": "unknown service 'nope' in 'staging'",
    } in answer["detail"]


def test_deciding_needs_the_right_token_and_a_refusal_says_why(api: Api, tmp_path: Path) -> None:
    code, submitted = api.call(
        "POST", "/api/releases", as_="pipeline", body=release_body(FIRST_FAILURE.write(tmp_path))
    )
    release_id = submitted["id"]
    api.until_ended(release_id)

    assert api.call("POST", f"/api/releases/{release_id}/retry", as_="pipeline", body={})[0] == 403
    code, answer = api.call("POST", f"/api/releases/{release_id}/approve", as_="oncall", body={})
    assert (code, answer["detail"]) == (409, "the release has ended (rolled_back)")
    assert api.call("POST", "/api/releases/R-nope/abort", as_="oncall", body={})[0] == 404


def test_the_dashboard_shows_the_light_a_release_and_the_queues(api: Api, tmp_path: Path) -> None:
    code, submitted = api.call(
        "POST", "/api/releases", as_="pipeline", body=release_body(SUCCESS.write(tmp_path))
    )
    assert code == 202
    api.until_ended(submitted["id"])
    require_chromium()

    page = parse_dom(rendered_dom(f"{api.url}/#token={api.tokens['reader']}", wait_ms=4000))

    assert page.by_id("light").attrs["data-light"] in ("green", "amber", "red")
    release = page.one("tr", {"data-release": submitted["id"]})
    assert release.attrs["data-state"] == "succeeded"
    components = page.find_all("li", {"data-component": True})
    assert any(c.attrs["data-state"] == "deployed" for c in components)
    namespace = api.cluster.env["DROVER_NAMESPACE"]
    queue = page.one("tr", {"data-queue": f"{namespace}.svc.api"})
    assert queue.attrs["data-ready"] == "0"


def test_locks_over_the_api_need_operate_and_are_listed(api: Api) -> None:
    body = {"reason": "db migration", "for_s": 600}

    assert api.call("PUT", "/api/locks/staging/cache", as_="pipeline", body=body)[0] == 403
    code, taken = api.call("PUT", "/api/locks/staging/cache", as_="oncall", body=body)
    assert code == 200 and (taken["owner"], taken["reason"]) == ("api:oncall", "db migration")
    code, listed = api.call("GET", "/api/locks", as_="reader")
    assert code == 200 and [h["service"] for h in listed["locks"]] == ["cache"]

    assert api.call("DELETE", "/api/locks/staging/cache", as_="oncall")[0] == 200
    assert api.call("DELETE", "/api/locks/staging/cache", as_="oncall")[0] == 404
    assert api.call("PUT", "/api/locks/staging/nope", as_="oncall", body=body)[0] == 404
