"""``POST /chatops/slack`` end to end: a real ``drover api`` process in front of a real
cluster on Redis, called the way Slack calls it, with progress posted to a real local
response_url.

Signatures, the grammar's replies, who may do what (by user name, by user id, by group),
separation of duties, Slack's retries and double posts, and the order of things: the
answer first, then progress, then the result.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.saga import ReleaseState
from orchestrator.store import Store, open_store
from tests.conftest import REDIS_URL
from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import FLEET
from tests.support.ports import free_port
from tests.support.slack import ResponseUrls, post_slash, signed, slash_form, texts

pytestmark = pytest.mark.broker

SECRET = "e2e-chatops-signing-secret-5f0c1d"
USERS = {
    "alice": "UALICE001",  # may deploy anything but db, by name; may approve in prod
    "bob": "UBOB00002",  # a release manager, by name in the group
    "carol": "UCAROL003",  # a release manager, by user id in the group
    "dave": "UDAVE0004",  # a DBA: db only
    "mallory": "UMALL0005",  # nobody
}
RELEASE_ID = re.compile(r"\bR-[0-9a-f]{10}\b")
SLOW_AGENT_S = 3.5  # longer than the webhook may take to answer Slack


def fleet_file(folder: Path, slow_agent: str) -> Path:
    """The e2e fleet, a ``payments`` service, access rules, a prod that needs a second
    person's approval, and a lab whose one host's agent is slow to say its version."""
    fleet = yaml.safe_load(FLEET.read_text())
    payments = {
        "hosts": ["pay-1", "pay-2"],
        # Slow enough that a release cannot end before its submission is answered.
        "driver": {"kind": "simulated", "initial_version": "1.0.0", "latency_ms": 150},
    }
    staging = fleet["environments"]["staging"]
    staging["services"]["payments"] = payments
    staging["access"] = {
        "deploy": {"*": ["alice", "release-managers"], "db": ["dba-team"]},
        "approve": ["release-managers"],
        "operate": ["release-managers"],
    }
    fleet["environments"]["prod"] = {
        "approval": {"required": True, "separate_approver": True},
        "access": {
            "deploy": {"*": ["alice", "release-managers"]},
            "approve": ["alice", "release-managers"],
            "operate": ["release-managers"],
        },
        "services": {"payments": payments},
    }
    fleet["environments"]["lab"] = {
        "services": {
            "ledger": {
                "hosts": ["ledger-1"],
                "driver": {"kind": "http", "load_balancer": slow_agent, "agent": slow_agent},
            }
        }
    }
    fleet["access"] = {"groups": {"release-managers": ["bob", "UCAROL003"], "dba-team": ["dave"]}}
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    return path


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    trigger: str

    @property
    def text(self) -> str:
        return str(self.body["text"])

    @property
    def in_channel(self) -> bool:
        return bool(self.body["response_type"] == "in_channel")

    @property
    def release_id(self) -> str:
        found = RELEASE_ID.search(self.text)
        assert found, self.text
        return found.group()


@dataclass
class Chat:
    url: str
    unconfigured_url: str
    urls: ResponseUrls
    store: Store
    cluster: Cluster

    def body(self, text: str, user: str, trigger: str) -> bytes:
        return slash_form(
            text,
            user_id=USERS[user],
            user_name=user,
            trigger_id=trigger,
            response_url=self.urls.url(trigger),
        )

    def say(self, text: str, user: str = "alice", trigger: str | None = None) -> Answer:
        """Type a slash command, as Slack sends it."""
        trigger = trigger or f"{uuid.uuid4().int % 10**12}.4744.{uuid.uuid4().hex}"
        body = self.body(text, user, trigger)
        status, answer = post_slash(self.url, body, signed(SECRET, body))
        assert status == 200, answer
        return Answer(status, answer, trigger)

    def raw(self, body: bytes, headers: dict[str, str], *, url: str | None = None) -> Answer:
        status, answer = post_slash(url or self.url, body, headers)
        return Answer(status, answer, "")

    def state(self, release_id: str) -> ReleaseState | None:
        stored = self.store.load(release_id)
        return stored.state if stored else None

    def releases_of(self, service: str, version: str) -> list[ReleaseState]:
        return [
            state
            for state in self.store.releases(limit=500)
            if any(c.service == service and c.version == version for c in state.components.values())
        ]

    def result(self, answer: Answer, timeout_s: float = 45) -> list[str]:
        """Every text posted to the command's response_url, up to the release's result."""
        posts = self.urls.wait_for(
            answer.trigger,
            lambda posts: any(_is_result(answer.release_id, t) for t in texts(posts)),
            timeout_s,
        )
        return list(texts(posts))


def _is_result(release_id: str, text: str) -> bool:
    return any(
        f"{release_id} {outcome}" in text
        for outcome in ("succeeded", "was rolled back", "was rejected", "FAILED")
    )


@contextmanager
def slow_agent() -> Iterator[str]:
    """A host agent (the http driver's protocol) that takes its time to say its version."""

    class Agent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(SLOW_AGENT_S)
            body = json.dumps({"version": "5.0.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    folder = tmp_path_factory.mktemp("chatops")
    with (
        ResponseUrls() as urls,
        slow_agent() as agent,
        running_cluster(
            "redis", folder, fleet=fleet_file(folder, agent), workers={"worker": ("all",)}
        ) as cluster,
    ):
        # Picked once this test's own servers hold theirs: a port picked before them could
        # be handed to one of them, and the API would find it taken.
        port, unconfigured = free_port(), free_port()
        cluster.start("api", "api", "--port", str(port), slack_signing_secret=SECRET)
        cluster.start("api-unconfigured", "api", "--port", str(unconfigured))
        store = open_store(REDIS_URL, namespace=cluster.env["DROVER_NAMESPACE"])
        found = Chat(
            f"http://127.0.0.1:{port}/chatops/slack",
            f"http://127.0.0.1:{unconfigured}/chatops/slack",
            urls,
            store,
            cluster,
        )
        for url in (found.url, found.unconfigured_url):
            _wait_until_listening(url, cluster)
        try:
            yield found
        finally:
            store.close()


def _wait_until_listening(url: str, cluster: Cluster) -> None:
    """Until Drover's API answers at ``url``: an answer that is not its JSON is another
    server's, on a port the API then could not take."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status, answer = post_slash(url, b"", {}, timeout_s=2)
        except OSError:
            time.sleep(0.2)
            continue
        assert answer is not None, f"not Drover's API at {url} ({status}); logs in {cluster.logs}"
        return
    raise AssertionError(f"drover api did not start; logs in {cluster.logs}")


# --- Signatures ---------------------------------------------------------------------------


def test_a_correctly_signed_request_is_answered(chat: Chat) -> None:
    body = chat.body("help", "mallory", "t-signed")

    answer = chat.raw(body, signed(SECRET, body))

    assert answer.status == 200
    assert answer.body["response_type"] == "ephemeral"
    assert answer.text.startswith("Drover commands:")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered body", "does not match the request body"),
        ("301 s early", "s old"),
        ("301 s late", "in the future"),
        ("no headers", "missing X-Slack-Request-Timestamp"),
        ("no signature", "missing X-Slack-Signature"),
        ("timestamp not a number", "not a whole number of seconds"),
        ("signed with another secret", "does not match the request body"),
    ],
)
def test_a_request_that_does_not_verify_is_refused_with_401(
    chat: Chat, case: str, reason: str
) -> None:
    body = chat.body("deploy payments@9.9.9 to staging", "alice", f"t-{case}")
    headers = {
        "tampered body": signed(SECRET, body.replace(b"9.9.9", b"6.6.6")),
        "301 s early": signed(SECRET, body, at=time.time() - 301),
        "301 s late": signed(SECRET, body, at=time.time() + 301),
        "no headers": {"Content-Type": "application/x-www-form-urlencoded"},
        "no signature": {k: v for k, v in signed(SECRET, body).items() if k != "X-Slack-Signature"},
        "timestamp not a number": {**signed(SECRET, body), "X-Slack-Request-Timestamp": "soon"},
        "signed with another secret": signed("not-" + SECRET, body),
    }[case]

    answer = chat.raw(body, headers)

    assert answer.status == 401
    assert reason in answer.body["detail"]
    assert SECRET not in str(answer.body)
    assert chat.releases_of("payments", "9.9.9") == []


def test_without_a_signing_secret_every_request_is_refused(chat: Chat) -> None:
    body = chat.body("help", "alice", "t-unconfigured")

    answer = chat.raw(body, signed(SECRET, body), url=chat.unconfigured_url)

    assert answer.status == 401
    assert "not configured" in answer.body["detail"]


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"text": "help"}', "application/json", "expected application/x-www-form-urlencoded"),
        (b"text=help&&user_id=U1", "application/x-www-form-urlencoded", "not a form"),
        (b"text=help&user_name=alice", "application/x-www-form-urlencoded", "has no user_id"),
    ],
)
def test_a_signed_body_that_is_not_slacks_form_is_refused_with_400(
    chat: Chat, body: bytes, content_type: str, reason: str
) -> None:
    headers = {**signed(SECRET, body), "Content-Type": content_type}

    answer = chat.raw(body, headers)

    assert answer.status == 400
    assert reason in answer.body["detail"]


# --- The grammar, over HTTP -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("", "Drover commands:"),
        ("help deploy", "Drover commands:"),
        ("deploi payments@2.4.0 to staging", "Did you mean `deploy`?"),
        ("deploy payments to staging", "needs a version, as in `payments@2.4.0`"),
        ("deploy payments@2.4.0", "`deploy` needs `to ENVIRONMENT`"),
        ("approve", "`approve` needs a release id"),
        ("lock staging/payments", "`lock` needs a reason"),
        ("<!channel> deploy", "I don't know the command `&lt;!channel&gt;`"),
        ("deploy payments@2.4.0 to nowhere", "There is no environment `nowhere`"),
        ("deploy nope@1.0 to staging", "components[0].service: unknown service 'nope'"),
        ("approve R-0000000000", "I know no release `R-0000000000`"),
        ("plan payments@2.4.0 cache@2.4.0 to prod", "unknown service 'cache'"),
        ("plan payments@2.4.0 to prod", "waits for an approval from someone other"),
    ],
)
def test_every_command_gets_a_reply_for_the_person_who_typed_it(
    chat: Chat, text: str, reply: str
) -> None:
    answer = chat.say(text, "alice")

    assert not answer.in_channel
    assert reply in answer.text


def test_the_webhook_is_in_the_openapi_document_as_a_form(chat: Chat) -> None:
    with urllib.request.urlopen(chat.url.replace("/chatops/slack", "/openapi.json")) as answer:
        document = json.loads(answer.read())

    body = document["paths"]["/chatops/slack"]["post"]["requestBody"]
    assert "user_id" in body["content"]["application/x-www-form-urlencoded"]["schema"]["required"]


def test_an_answer_that_takes_too_long_follows_by_the_response_url(chat: Chat) -> None:
    answer = chat.say("where ledger", "mallory")

    assert "Working on it" in answer.text and not answer.in_channel
    posted = chat.urls.wait_for(answer.trigger, lambda posts: len(posts) == 1)
    assert posted[0].body["response_type"] == "ephemeral"
    assert "lab: 5.0.0 on ledger-1" in posted[0].body["text"]


def test_status_queues_and_where_a_service_runs(chat: Chat) -> None:
    namespace = chat.cluster.env["DROVER_NAMESPACE"]

    assert re.match(r"Drover is (green|amber|red)\.", chat.say("status", "mallory").text)
    assert f"{namespace}.svc.payments  ready" in chat.say("queues", "mallory").text
    where = chat.say("where payments", "mallory").text
    assert re.search(r"staging: \S+ on all 2 hosts", where), where
    assert re.search(r"prod: \S+ on all 2 hosts", where), where
    assert "No environment has a service `nope`" in chat.say("where nope", "mallory").text


# --- Who may do what ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "service", "may"),
    [
        ("alice", "cache", True),  # by user name, under "*"
        ("bob", "jobs", True),  # by a group that names him
        ("carol", "web", True),  # by a group that names her user id
        ("dave", "db", True),  # by the service's own entry
        ("dave", "cache", False),  # the DBA group is not under "*"
        ("alice", "db", False),  # db's own entry replaces "*"
        ("mallory", "cache", False),
    ],
)
def test_who_may_deploy_what(chat: Chat, user: str, service: str, may: bool) -> None:
    version = f"6.{list(USERS).index(user)}.{uuid.uuid4().int % 1000}"

    answer = chat.say(f"deploy {service}@{version} to staging", user)

    if may:
        assert answer.in_channel and f"submitted by slack:{user}" in answer.text
        chat.result(answer)
        assert chat.state(answer.release_id) is not None
    else:
        assert not answer.in_channel
        assert f"Not deployed: you may not deploy {service} here" in answer.text
        assert chat.releases_of(service, version) == []


def test_approving_needs_leave_and_someone_other_than_the_requester(chat: Chat) -> None:
    deploy = chat.say("deploy payments@2.4.0 to prod because new fee model", "alice")
    release_id = deploy.release_id
    assert deploy.in_channel and "waits for an approval from someone else" in deploy.text
    # The release waits for a person: that is progress, posted at once.
    chat.urls.wait_for(
        deploy.trigger, lambda posts: any("waiting for approval" in t for t in texts(posts))
    )

    own = chat.say(f"approve {release_id}", "alice")
    outsider = chat.say(f"approve {release_id}", "mallory")
    dba = chat.say(f"approve {release_id}", "dave")
    other = chat.say(f"approve {release_id} because fees checked", "bob")

    assert not own.in_channel
    assert "slack:alice asked for this release; prod needs another approver" in own.text
    assert "you may not approve here" in outsider.text and not outsider.in_channel
    assert "you may not approve here" in dba.text
    assert other.in_channel and f"slack:bob approved {release_id}" in other.text
    posted = chat.result(deploy)
    assert "waiting for approval" in posted[0]  # progress first, the result last
    assert "approved by slack:bob: fees checked" in "\n".join(posted)
    assert f"{release_id} succeeded: payments@2.4.0 in prod" in posted[-1]
    state = chat.state(release_id)
    assert state is not None
    assert (state.requested_by, state.approved_by) == ("slack:alice", "slack:bob")


def test_operating_a_release_needs_leave_and_the_saga_still_has_its_say(chat: Chat) -> None:
    deploy = chat.say("deploy cache@7.7.0 to staging", "alice")
    chat.result(deploy)

    refused = chat.say(f"retry {deploy.release_id}", "alice")
    let_through = chat.say(f"pause {deploy.release_id} because looking", "carol")

    assert "Not done: you may not operate here" in refused.text
    assert "only release-managers may" in refused.text
    assert not let_through.in_channel
    assert "Not done: the release has ended (succeeded)" in let_through.text
    shown = chat.say(f"status {deploy.release_id}", "mallory")
    assert f"{deploy.release_id} to staging: succeeded" in shown.text
    assert "cache -&gt; 7.7.0: deployed" in shown.text  # Slack shows "&gt;" as ">"


def test_locking_a_service_by_chat(chat: Chat) -> None:
    refused = chat.say("lock staging/jobs load test", "mallory")
    taken = chat.say("lock staging/jobs load test for 2h", "bob")
    again = chat.say("lock staging/jobs mine now", "carol")
    not_hers = chat.say("unlock staging/jobs", "carol")
    forced = chat.say("unlock staging/jobs force", "carol")
    gone = chat.say("unlock staging/jobs", "bob")

    assert "you may not operate here" in refused.text
    assert taken.in_channel
    assert re.search(r"slack:bob locked staging/jobs until .* UTC: load test\.", taken.text)
    assert "Already locked by slack:bob: staging/jobs until" in again.text
    assert not not_hers.in_channel
    assert "Not unlocked: slack:bob locked staging/jobs" in not_hers.text
    assert "`unlock staging/jobs force` lifts it" in not_hers.text
    assert forced.in_channel
    assert "slack:carol unlocked staging/jobs by force (locked by slack:bob: load test)" in (
        forced.text
    )
    assert "staging/jobs is not locked" in gone.text


# --- Idempotency ----------------------------------------------------------------------------


def test_a_slack_retry_and_a_second_post_start_one_release(chat: Chat) -> None:
    text = "deploy cache@8.0.0 to staging"
    first = chat.say(text, "alice")
    # Slack's retry: the same body (same trigger), signed again, with the retry header.
    body = chat.body(text, "alice", first.trigger)
    retried = chat.raw(body, {**signed(SECRET, body), "X-Slack-Retry-Num": "1"})
    posted_again = chat.say(text, "alice")
    spelt_otherwise = chat.say("Deploy   cache@8.0.0  TO staging", "alice")

    assert retried.status == 200
    assert retried.body == first.body  # the same id, submitted again: a known duplicate
    for second in (posted_again, spelt_otherwise):
        assert not second.in_channel
        assert f"already started as {first.release_id}" in second.text
    results = chat.result(first)
    assert [s.id for s in chat.releases_of("cache", "8.0.0")] == [first.release_id]
    time.sleep(1)  # a second follower would post its result by now
    assert sum(_is_result(first.release_id, t) for t in texts(chat.urls.posts(first.trigger))) == 1
    assert f"{first.release_id} succeeded" in results[-1]
    assert chat.urls.posts(posted_again.trigger) == []


# --- What follows the answer ----------------------------------------------------------------


def test_the_answer_comes_first_then_progress_then_the_result(chat: Chat) -> None:
    answer = chat.say("deploy payments@3.0.0 cache@3.0.0 to staging", "alice")
    at_answer = chat.state(answer.release_id)
    posts_at_answer = chat.urls.attempts(answer.trigger)

    assert answer.in_channel and "Progress follows here" in answer.text
    assert at_answer is None or not at_answer.status.is_terminal
    assert posts_at_answer == []
    posted = chat.result(answer)
    *progress, result = posted
    assert any("deployed" in text for text in progress)  # in a post before the result's
    assert "cache@3.0.0 deployed" in "\n".join(posted)
    assert "payments@3.0.0 deployed" in "\n".join(posted)
    assert f"{answer.release_id} succeeded" in result


def test_a_failure_is_posted_with_what_was_put_back_despite_a_busy_response_url(
    chat: Chat,
) -> None:
    trigger = f"t-failure-{uuid.uuid4().hex[:8]}"
    chat.urls.fail_first(trigger, 503)  # the first post is refused once, then taken

    answer = chat.say("deploy payments@4.0.0 api@2.0.0-broken to staging", "bob", trigger)

    posted = "\n".join(chat.result(answer))
    assert "api@2.0.0-broken failed" in posted
    assert "api-3" in posted
    assert "payments rolled back to" in posted
    assert f"{answer.release_id} was rolled back" in posted
    assert chat.urls.attempts(trigger)[0].status == 503

    retried = chat.say(f"retry {answer.release_id} because flaky host", "bob")

    assert retried.in_channel and f"slack:bob retried {answer.release_id}" in retried.text
    again = chat.result(retried)  # followed again, to the retry's response_url
    assert f"{answer.release_id} was rolled back" in again[-1]
    assert "attempt 2 started by slack:bob" not in "\n".join(again)  # only what came after
