"""``POST /chatops/slack``: Drover driven from a Slack-compatible slash command.

The request is checked before anything is read from it: without a configured signing
secret every request is refused (401), and a request whose signature or timestamp does
not verify is refused (401, with the reason and never the secret). What is left is Slack's
form, read into a :class:`SlashCommand` (400 if it is not that form).

Slack waits 3 s for an answer. Nothing here waits for a release: a deploy is checked,
planned and submitted, answered at once ("R-… submitted"), and followed in a thread that
posts progress and the result to the request's ``response_url``. A command that takes
longer than the answer can wait (a slow broker, a host that is slow to say its version)
is answered "working on it" and its answer is posted to ``response_url`` when it comes.

Everyone is known as ``slack:<user name>`` in timelines and locks; access is checked with
the user id and the user name (``orchestrator.chatops.access``). Slack retries a request
it got no answer to, and people post the same command twice: a deploy takes a lease named
after the person and the command, so neither starts a second release (see ``_Commands._claim``).
"""

# No "from __future__ import annotations": FastAPI reads the route's annotations at run time.
import asyncio
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orchestrator.bus import BrokerUnavailable
from orchestrator.chatops.access import Verdict, allowed, required_action
from orchestrator.chatops.grammar import (
    HELP,
    ChatError,
    Command,
    Decide,
    Deploy,
    Help,
    Lock,
    Queues,
    Status,
    Unlock,
    Where,
    parse,
)
from orchestrator.chatops.signature import SignatureRefused, verify
from orchestrator.client import Client, fleet_versions
from orchestrator.contract import (
    ApprovalRefused,
    ApprovalRequested,
    ComponentDeployed,
    ComponentFailed,
    ComponentHeld,
    ComponentRollbackFailed,
    ComponentRolledBack,
    DeadlinePassed,
    Envelope,
    FlagToggled,
    FlagToggleFailed,
    ReleaseApproved,
    ReleasePaused,
    ReleaseQueued,
    ReleaseResumed,
    ReleaseRetried,
)
from orchestrator.fleet import EnvironmentConfig, Fleet
from orchestrator.manual_locks import LockHeld, ManualLock, NotLocked, NotYours, lock, unlock
from orchestrator.narration import describe
from orchestrator.observability import get_logger
from orchestrator.plan_view import plan_lines, plan_view
from orchestrator.plans import InvalidInput, plan_release
from orchestrator.queues import queue_depths
from orchestrator.runtime import Parts
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.status import gather, judge
from orchestrator.store import Store, StoreUnavailable
from workers.http_call import NoAnswer, http_request

__all__ = ["PATH", "Reply", "SlashCommand", "chatops_router"]

log = get_logger(__name__)

PATH: Final = "/chatops/slack"

# Slack gives up on an answer after 3 s; what is not ready by then follows by response_url.
_ANSWER_WITHIN_S: Final = 2.5
_DECIDE_TIMEOUT_S: Final = 2.0
_MAX_BODY: Final = 64 * 1024  # Slack's form is a few hundred bytes; more is not Slack
# The window in which the same command by the same person is the same request.
_SAME_COMMAND_S: Final = 60.0

# response_url: Slack takes up to 5 posts within 30 minutes, then refuses more.
_POSTS_PER_URL: Final = 5
_FOLLOW_FOR_S: Final = 30 * 60
_FOLLOW_POLL_S: Final = 0.5
_PROGRESS_EVERY_S: Final = 20.0  # between two progress posts, unless a person is needed
_FOLLOW_LEASE_S: Final = 30.0
_MAX_FOLLOWERS: Final = 64  # threads following releases at once, per process
_POST_TIMEOUT_S: Final = 5.0
_POST_PAUSES_S: Final = (0.0, 1.0, 3.0)  # before each attempt: a first try, two retries

_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_FIELDS: Final = (
    "text",
    "user_id",
    "user_name",
    "team_id",
    "trigger_id",
    "response_url",
    "command",
)
_FIELD_PATTERNS: Final = {
    # Ids and names go into store keys, leases and timelines: held to plain characters.
    # Matched whole (fullmatch): "$" would let a trailing newline through.
    "user_id": re.compile(r"[A-Za-z0-9._-]{1,80}"),
    "user_name": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"),
    "team_id": re.compile(r"[A-Za-z0-9._-]{1,80}"),
    "trigger_id": re.compile(r"[A-Za-z0-9._-]{1,200}"),
    "command": re.compile(r"/[^\s]{1,80}"),
}
_PAST: Final = {
    "approve": "approved",
    "reject": "rejected",
    "abort": "aborted",
    "pause": "paused",
    "resume": "resumed",
    "retry": "retried",
}


# --- What Slack sends, and what it gets back -------------------------------------------------


@dataclass(frozen=True)
class SlashCommand:
    """One slash command, as Slack's form gives it."""

    text: str
    user_id: str
    user_name: str
    team_id: str
    trigger_id: str  # unique per invocation; a Slack retry carries the same one
    response_url: str
    command: str

    @property
    def actor(self) -> str:
        # The name, not the id: timelines and locks are read by people.
        return f"slack:{self.user_name}"

    @property
    def names(self) -> tuple[str, str]:
        return self.user_id, self.user_name


@dataclass(frozen=True)
class Reply:
    """What the person (ephemeral) or the channel (in_channel) is told."""

    text: str
    in_channel: bool = False

    def body(self) -> dict[str, str]:
        return {
            "response_type": "in_channel" if self.in_channel else "ephemeral",
            "text": self.text,
        }


class _NotSlackForm(Exception):
    """A signed body that is not the form of a slash command."""


def _esc(text: object) -> str:
    """Text from a person, a worker or the store, made inert: Slack reads ``<…>`` as a
    mention or a link, and ``&`` starts an entity."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(lines: Sequence[str]) -> str:
    return "```\n" + _esc("\n".join(lines)) + "\n```"


# --- The route ---------------------------------------------------------------------------------


def chatops_router(parts: Parts) -> APIRouter:
    """``POST /chatops/slack``; it needs no bearer token, the signature stands for one."""
    chat = _Chatops(parts)
    router = APIRouter()
    form = {
        "type": "object",
        "required": list(_FIELDS),
        "properties": {name: {"type": "string"} for name in _FIELDS},
    }

    @router.post(
        PATH,
        summary="Slack slash command (signed with the app's signing secret)",
        response_model=None,
        openapi_extra={"requestBody": {"content": {_FORM_TYPE: {"schema": form}}}},
    )
    async def slack(request: Request) -> JSONResponse:
        return await chat.handle(request)

    return router


def _refused(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _Chatops:
    """The webhook: check the request, then answer it within Slack's wait."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="drover-chat")
        poster = _Poster()
        self._commands = _Commands(parts, _Follower(parts.store, poster))
        self._poster = poster

    async def handle(self, request: Request) -> JSONResponse:
        began = time.monotonic()
        secret = self._parts.settings.slack_signing_secret
        if secret is None or not secret.get_secret_value():
            return _refused(
                401, "the chatops webhook is not configured (DROVER_SLACK_SIGNING_SECRET)"
            )
        body = await _read_body(request)
        if body is None:
            return _refused(413, f"the body is larger than {_MAX_BODY} bytes")
        try:
            verify(secret.get_secret_value(), request.headers, body, time.time())
        except SignatureRefused as refused:
            return _refused(401, refused.reason)
        try:
            slash = _slash_command(request.headers.get("content-type", ""), body)
        except _NotSlackForm as bad:
            return _refused(400, str(bad))
        if slash is None:  # Slack's ssl_check: it only wants to know we answer
            return JSONResponse({})
        reply = await self._answer(slash, began + _ANSWER_WITHIN_S)
        return JSONResponse(reply.body())

    async def _answer(self, slash: SlashCommand, deadline: float) -> Reply:
        """The answer, if it is ready by ``deadline``; else "working on it", and the answer
        goes to ``response_url`` when it is ready."""
        future = self._pool.submit(self._commands.respond, slash)
        # asyncio.wait, not wait_for: a timeout must not cancel the work.
        done, _ = await asyncio.wait(
            {asyncio.wrap_future(future)}, timeout=max(0.0, deadline - time.monotonic())
        )
        if done:
            return future.result()
        future.add_done_callback(lambda late: self._post_late(slash, late))
        return Reply("Working on it: the answer will follow here.")

    def _post_late(self, slash: SlashCommand, late: "Future[Reply]") -> None:
        # A thread of its own: with its retries a post can take seconds, and the pool's
        # workers are for answering.
        threading.Thread(
            target=self._poster.post,
            args=(slash.response_url, late.result()),
            name="drover-chat-late-answer",
            daemon=True,
        ).start()


async def _read_body(request: Request) -> bytes | None:
    """The raw body (the signature covers its exact bytes); None if it is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return None
    return bytes(body)


def _slash_command(content_type: str, body: bytes) -> SlashCommand | None:
    """Slack's form, read strictly; None for an ``ssl_check``."""
    if content_type.partition(";")[0].strip().lower() != _FORM_TYPE:
        raise _NotSlackForm(f"expected {_FORM_TYPE}, not {content_type or 'no content type'}")
    try:
        form = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise _NotSlackForm(f"not a form: {error}") from error
    if form.get("ssl_check") == ["1"]:
        return None
    fields = {name: _one(form, name) for name in _FIELDS}
    for name, pattern in _FIELD_PATTERNS.items():
        if not pattern.fullmatch(fields[name]):
            raise _NotSlackForm(f"{name} is not of the form Slack sends")
    if not _postable(fields["response_url"]):
        raise _NotSlackForm("response_url is not an http(s) URL")
    return SlashCommand(**fields)


def _one(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name)
    if values is None:
        raise _NotSlackForm(f"the form has no {name}")
    if len(values) != 1:
        raise _NotSlackForm(f"{name} is given {len(values)} times")
    return values[0]


def _postable(url: str) -> bool:
    parts = urlsplit(url)
    return len(url) <= 2000 and parts.scheme in ("http", "https") and bool(parts.hostname)


# --- The commands ------------------------------------------------------------------------------


class _Commands:
    """Each command, carried out with short timeouts; a reply, never an exception."""

    def __init__(self, parts: Parts, follower: "_Follower") -> None:
        self._parts = parts
        self._fleet: Fleet = parts.fleet
        self._store: Store = parts.store
        self._client = Client(parts.store, parts.bus)
        self._follower = follower

    def respond(self, slash: SlashCommand) -> Reply:
        try:
            command = parse(slash.text)
        except ChatError as error:
            return Reply(error.reply)
        log.info("chat command", actor=slash.actor, command=type(command).__name__)
        try:
            return self._run(slash, command)
        except (StoreUnavailable, BrokerUnavailable) as error:
            # The details name hosts: they go to the log, not to the channel.
            log.warning("chat command found Drover unavailable", error=str(error))
            away = "store" if isinstance(error, StoreUnavailable) else "broker"
            return Reply(f"Drover cannot reach its {away} just now. Try again in a moment.")
        except Exception:
            # Whatever it was, the person gets a sentence, and the log gets the traceback.
            log.exception("chat command failed", actor=slash.actor, text=slash.text)
            return Reply("Something went wrong in Drover; it is in the API's log.")

    def _run(self, slash: SlashCommand, command: Command) -> Reply:
        match command:
            case Deploy(dry_run=True):
                return self._plan(command)
            case Deploy():
                return self._deploy(slash, command)
            case Decide():
                return self._decide(slash, command)
            case Status():
                return self._status(command)
            case Queues():
                return self._queues()
            case Where():
                return self._where(command)
            case Lock():
                return self._lock(slash, command)
            case Unlock():
                return self._unlock(slash, command)
            case Help():
                return Reply(HELP)
        raise TypeError(f"unknown command {command!r}")

    # --- access --------------------------------------------------------------------------

    def _environment(self, name: str) -> EnvironmentConfig | None:
        return self._fleet.environments.get(name)

    def _unknown_environment(self, name: str) -> Reply:
        known = ", ".join(sorted(self._fleet.environments))
        return Reply(f"There is no environment `{_esc(name)}`; there are: {known}.")

    def _verdict(
        self,
        slash: SlashCommand,
        environment: EnvironmentConfig | None,
        command: Command,
        services: Sequence[str] = (),
    ) -> Verdict:
        action = required_action(command)
        if action is None:
            return Verdict(allowed=True)
        return allowed(
            self._fleet.access,
            environment.access if environment else None,
            actor_names=slash.names,
            action=action,
            services=services,
        )

    def _first_time(self, slash: SlashCommand) -> bool:
        """Is this not Slack sending a request again (same trigger) that was handled?

        Counted in the store, so a retry that lands on another API process is caught too.
        """
        return self._store.count_attempt(f"chat/trigger/{slash.team_id}/{slash.trigger_id}") == 1

    # --- deploy and plan --------------------------------------------------------------------

    def _plan(self, command: Deploy) -> Reply:
        try:
            view = plan_view(self._fleet, command.release())
        except InvalidInput as invalid:
            return _invalid(invalid)
        return Reply(_code(list(plan_lines(view))))

    def _deploy(self, slash: SlashCommand, command: Deploy) -> Reply:
        environment = self._environment(command.environment)
        if environment is None:
            return self._unknown_environment(command.environment)
        verdict = self._verdict(slash, environment, command, command.services)
        if not verdict:
            return Reply(f"Not deployed: {_esc(verdict.reason)}.")
        request = command.release()
        try:
            plan_release(self._fleet, request)
        except InvalidInput as invalid:
            return _invalid(invalid)
        key = _command_key(slash, command)
        release_id, ours = self._claim(key, slash.trigger_id)
        if not ours:
            return Reply(
                f"You asked for this less than a minute ago: it is already started as"
                f" {release_id}, and it is not started twice. Its progress goes where you"
                " asked first."
            )
        try:
            self._client.submit(request, slash.actor, release_id)
        except BrokerUnavailable:
            # Free the command at once: a person trying again must not be told it started.
            self._store.release_lease(f"chat/{key}", slash.trigger_id)
            raise
        followed = self._follower.start(release_id, slash.response_url)
        return Reply(_submitted(release_id, slash, command, environment, followed), in_channel=True)

    def _claim(self, key: str, trigger: str) -> tuple[str, bool]:
        """The release id for this command, and whether this request may submit it.

        The lease is the command's for 60 s, owned by the trigger that took it: Slack's
        retry (same trigger) takes it again and submits the same id, which the coordinator
        recognises as a duplicate; a second trigger in the window is told the first's id.
        """
        lease = f"chat/{key}"
        for _ in range(2):  # the holder's lease may lapse between the two calls
            if self._store.acquire_lease(lease, trigger, ttl_s=_SAME_COMMAND_S):
                return _release_id(key, trigger), True
            holder = self._store.lease_holder(lease)
            if holder is not None:
                return _release_id(key, holder), False
        raise StoreUnavailable(f"the lease {lease} could be neither taken nor read")

    # --- decisions ---------------------------------------------------------------------------

    def _decide(self, slash: SlashCommand, command: Decide) -> Reply:
        stored = self._store.load(command.release_id)
        if stored is None:
            return Reply(f"I know no release `{_esc(command.release_id)}`.")
        environment = self._environment(stored.state.environment)
        verdict = self._verdict(slash, environment, command)
        if not verdict:
            return Reply(f"Not done: {_esc(verdict.reason)}.")
        if not self._first_time(slash):
            return Reply("Slack sent this again; it was handled the first time.")
        try:
            caused = self._client.decide(
                command.release_id, command.command(), slash.actor, timeout_s=_DECIDE_TIMEOUT_S
            )
        except TimeoutError:
            return Reply(
                f"Sent; the coordinator has not answered yet. `status {command.release_id}`"
                " shows what became of it."
            )
        refusals = [m.payload for m in caused if isinstance(m.payload, ApprovalRefused)]
        if refusals:
            return Reply(f"Not done: {_esc(refusals[0].reason)}.")
        if command.kind == "retry":  # the release runs again: follow it again
            self._follower.start(command.release_id, slash.response_url, from_now=True)
        text = f"{slash.actor} {_PAST[command.kind]} {command.release_id}."
        if caused:
            text += "\n" + _code([describe(m) for m in caused])
        return Reply(text, in_channel=True)

    # --- reading -------------------------------------------------------------------------------

    def _status(self, command: Status) -> Reply:
        if command.release_id is not None:
            stored = self._store.load(command.release_id)
            if stored is None:
                return Reply(f"I know no release `{_esc(command.release_id)}`.")
            return Reply(_code(_release_lines(stored.state)))
        light, reasons = judge(gather(self._parts, datetime.now(UTC)))
        lines = [f"Drover is {light.name.lower()}."]
        lines += [f"• {r.light.name.lower()}: {_esc(r.what)}: {_esc(r.detail)}" for r in reasons]
        return Reply("\n".join(lines))

    def _queues(self) -> Reply:
        rows = queue_depths(self._parts)
        lines = [
            f"{row['name']}  ready {row['ready']}  unacked {_unknown(row['unacked'])}"
            f"  consumers {_unknown(row['consumers'])}"
            f"  oldest {_unknown(row['oldest_age_s'])} s"
            for row in rows
        ]
        return Reply(_code(lines))

    def _where(self, command: Where) -> Reply:
        having = {
            name: environment.model_copy(
                update={"services": {command.service: environment.services[command.service]}}
            )
            for name, environment in self._fleet.environments.items()
            if command.service in environment.services
        }
        if not having:
            return Reply(f"No environment has a service `{_esc(command.service)}`.")
        # Only this service's hosts are asked: the others would only cost time.
        narrowed = self._fleet.model_copy(update={"environments": having})
        versions = fleet_versions(narrowed, self._store)
        lines = [
            f"{name}: {_versions_line(hosts[command.service])}" for name, hosts in versions.items()
        ]
        return Reply(f"`{command.service}`:\n" + _code(lines))

    # --- locks ---------------------------------------------------------------------------------

    def _lock(self, slash: SlashCommand, command: Lock) -> Reply:
        refusal = self._may_operate(slash, command, command.environment, command.service)
        if refusal is not None:
            return refusal
        try:
            taken = lock(
                self._store,
                command.environment,
                command.service,
                owner=slash.actor,
                reason=command.reason,
                for_s=command.for_s,
                now=datetime.now(UTC),
            )
        except LockHeld as held:
            owner = _esc(held.holder.owner)
            return Reply(f"Already locked by {owner}: {_lock_line(held.holder)}.")
        return Reply(f"{slash.actor} locked {_lock_line(taken)}.", in_channel=True)

    def _unlock(self, slash: SlashCommand, command: Unlock) -> Reply:
        refusal = self._may_operate(slash, command, command.environment, command.service)
        if refusal is not None:
            return refusal
        try:
            lifted = unlock(
                self._store,
                command.environment,
                command.service,
                actor=slash.actor,
                force=command.force,
                now=datetime.now(UTC),
            )
        except NotLocked:
            return Reply(f"{command.environment}/{command.service} is not locked.")
        except NotYours as theirs:
            return Reply(
                f"Not unlocked: {_esc(theirs.holder.owner)} locked {_lock_line(theirs.holder)}."
                " `unlock"
                f" {command.environment}/{command.service} force` lifts it, and says you did."
            )
        text = f"{slash.actor} unlocked {command.environment}/{command.service}"
        if lifted.owner != slash.actor:
            text += f" by force (locked by {_esc(lifted.owner)}: {_esc(lifted.reason)})"
        return Reply(text + ".", in_channel=True)

    def _may_operate(
        self, slash: SlashCommand, command: Lock | Unlock, environment: str, service: str
    ) -> Reply | None:
        """None if the person may lock or unlock this service; else the reply saying why."""
        config = self._environment(environment)
        if config is None:
            return self._unknown_environment(environment)
        if service not in config.services:
            return Reply(f"{environment} has no service `{_esc(service)}`.")
        verdict = self._verdict(slash, config, command)
        if not verdict:
            return Reply(f"Not done: {_esc(verdict.reason)}.")
        if not self._first_time(slash):
            return Reply("Slack sent this again; it was handled the first time.")
        return None


def _command_key(slash: SlashCommand, command: Deploy) -> str:
    """Who asked for what: the parsed command, so that keyword case, spacing and commas
    do not make the same request a different one."""
    meaning = "\n".join((slash.team_id, slash.user_id, repr(command)))
    return hashlib.sha256(meaning.encode()).hexdigest()


def _release_id(key: str, trigger: str) -> str:
    return "R-" + hashlib.sha256(f"{key}\n{trigger}".encode()).hexdigest()[:10]


def _invalid(invalid: InvalidInput) -> Reply:
    problems = "\n".join(f"• {_esc(problem)}" for problem in invalid.problems)
    return Reply(f"That release cannot go:\n{problems}")


def _submitted(
    release_id: str,
    slash: SlashCommand,
    command: Deploy,
    environment: EnvironmentConfig,
    followed: bool,
) -> str:
    items = command.components
    targets = ", ".join(_target(c.service, c.version, c.flag, c.enabled) for c in items)
    text = f"{release_id} submitted by {slash.actor}: {targets} to {command.environment}"
    text += f" because {_esc(command.reason)}." if command.reason else "."
    if environment.approval.required:
        other = " from someone else" if environment.approval.separate_approver else ""
        text += f" It waits for an approval{other}: `approve {release_id}`."
    if followed:
        return text + " Progress follows here."
    return text + f" Follow it with `drover watch {release_id}`."


def _target(service: str, version: str | None, flag: str | None, enabled: bool) -> str:
    if flag is not None:
        return f"flag {service}.{flag} {'on' if enabled else 'off'}"
    return f"{service}@{version}"


def _unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _versions_line(hosts: Mapping[str, str]) -> str:
    """``2.4.0 on all 3 hosts``, or each version with its hosts."""
    by_version: dict[str, list[str]] = {}
    for host, version in hosts.items():
        by_version.setdefault(version, []).append(host)
    if len(by_version) == 1:
        version, having = next(iter(by_version.items()))
        return (
            f"{version} on all {len(having)} hosts"
            if len(having) > 1
            else f"{version} on {having[0]}"
        )
    return "; ".join(f"{v} on {', '.join(h)}" for v, h in by_version.items())


def _lock_line(held: ManualLock) -> str:
    until = f" until {held.until:%Y-%m-%d %H:%M} UTC" if held.until else " until unlocked"
    return f"{held.environment}/{held.service}{until}: {_esc(held.reason)}"


def _release_lines(state: ReleaseState) -> list[str]:
    lines = [
        f"{state.id} to {state.environment}: {state.status} (attempt {state.attempt})",
        f"requested by {state.requested_by}" + (f": {state.reason}" if state.reason else ""),
    ]
    lines += [f"  {c.name} -> {c.target}: {c.status}" for c in state.components.values()]
    if state.waiting_for_approval:
        lines.append("waiting for approval: " + ", ".join(state.waiting_for_approval))
    if state.failure:
        lines.append(f"failure: {state.failure}")
    return lines


# --- Following a release to the response_url ---------------------------------------------------


class _Poster:
    """Posts to a response_url: a timeout, a couple of retries, never a redirect followed
    (``http_request`` treats a redirect as an answer)."""

    def post(self, url: str, reply: Reply) -> bool:
        if not _postable(url):
            return False
        for pause in _POST_PAUSES_S:
            time.sleep(pause)
            try:
                answer = http_request(
                    "POST", url, timeout_s=_POST_TIMEOUT_S, json_body=reply.body()
                )
            except NoAnswer as error:
                log.warning("response_url did not answer", error=str(error))
                continue
            if 200 <= answer.status < 300:
                return True
            if answer.status != 429 and answer.status < 500:  # no use asking again
                log.warning("response_url refused a post", status=answer.status)
                return False
        return False


class _Follower:
    """Follows releases in threads, one per release across every API process (a lease)."""

    def __init__(self, store: Store, poster: _Poster) -> None:
        self._store = store
        self._poster = poster
        self._slots = threading.BoundedSemaphore(_MAX_FOLLOWERS)

    def start(self, release_id: str, response_url: str, *, from_now: bool = False) -> bool:
        """Follow the release in a thread; False if this process follows too many already.

        ``from_now``: tell only what happens from here on (a retried release's earlier
        attempt was told to whoever followed it then).
        """
        if not self._slots.acquire(blocking=False):
            return False
        following = _Following(self._store, self._poster, release_id, response_url, from_now)
        threading.Thread(
            target=self._follow, args=(following,), name=f"drover-chat-{release_id}", daemon=True
        ).start()
        return True

    def _follow(self, following: "_Following") -> None:
        try:
            following.run()
        except Exception:
            log.exception("following a release for chat failed", release_id=following.release_id)
        finally:
            self._slots.release()


class _Following:
    """One release followed to one response_url: progress in few posts, then the result.

    Slack allows 5 posts to a response_url, so progress is gathered and posted at most
    every ``_PROGRESS_EVERY_S`` (at once when a person is needed), and the last post is
    always kept for the result.
    """

    def __init__(
        self, store: Store, poster: _Poster, release_id: str, url: str, from_now: bool
    ) -> None:
        self.release_id = release_id
        self._from_now = from_now
        self._store = store
        self._poster = poster
        self._url = url
        self._owner = uuid.uuid4().hex
        self._lease = f"chat/follow/{release_id}"
        self._posts_left = _POSTS_PER_URL
        self._pending: list[str] = []
        self._last_progress = float("-inf")
        self._seen = 0
        self._actors: dict[str, str] = {}  # message id -> actor, for who caused an event

    def run(self) -> None:
        if not self._store.acquire_lease(self._lease, self._owner, _FOLLOW_LEASE_S):
            return  # another request or process follows it already
        try:
            if self._from_now:
                self._seen = len(self._store.timeline(self.release_id))
            self._until_ended(time.monotonic() + _FOLLOW_FOR_S)
        finally:
            self._store.release_lease(self._lease, self._owner)

    def _until_ended(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if not self._still_ours():
                    return
                ended = self._look()
            except StoreUnavailable as error:
                log.warning("chat follower cannot read the store", error=str(error))
                ended = None
            if ended is not None:
                self._post(_result(ended, self._pending))
                return
            time.sleep(_FOLLOW_POLL_S)
        self._post(_progress(self.release_id, [*self._pending, "no longer followed here"]))

    def _still_ours(self) -> bool:
        """Renew the lease; False if it lapsed (a stall) and another follower took it."""
        if self._store.renew_lease(self._lease, self._owner, _FOLLOW_LEASE_S):
            return True
        return self._store.acquire_lease(self._lease, self._owner, _FOLLOW_LEASE_S)

    def _look(self) -> ReleaseState | None:
        """Gather what happened since the last look; the release's state once it ended."""
        # The state first: the timeline then holds at least everything that led to it.
        stored = self._store.load(self.release_id)
        timeline = self._store.timeline(self.release_id)
        fresh, self._seen = timeline[self._seen :], len(timeline)
        urgent = False
        for message in fresh:
            self._actors[message.id] = message.actor
            line = _progress_line(message, self._actors)
            if line is not None:
                self._pending.append(line.text)
                urgent = urgent or line.needs_a_person
        if stored is not None and stored.state.status.is_terminal:
            return stored.state
        self._maybe_post_progress(urgent)
        return None

    def _maybe_post_progress(self, urgent: bool) -> None:
        due = urgent or time.monotonic() - self._last_progress >= _PROGRESS_EVERY_S
        if self._pending and due and self._posts_left > 1:
            self._post(_progress(self.release_id, self._pending))
            self._pending = []
            self._last_progress = time.monotonic()

    def _post(self, reply: Reply) -> None:
        if self._posts_left > 0:
            self._posts_left -= 1
            self._poster.post(self._url, reply)


@dataclass(frozen=True)
class _Line:
    text: str
    needs_a_person: bool = False


def _progress(release_id: str, lines: Sequence[str]) -> Reply:
    return Reply(f"{release_id}:\n" + "\n".join(f"• {line}" for line in lines), in_channel=True)


def _result(state: ReleaseState, pending: Sequence[str]) -> Reply:
    progress = "".join(f"• {line}\n" for line in pending)
    match state.status:
        case ReleaseStatus.SUCCEEDED:
            targets = ", ".join(
                _target(c.service, c.version, c.flag, c.enabled) for c in state.components.values()
            )
            outcome = f"{state.id} succeeded: {targets} in {state.environment}."
        case ReleaseStatus.ROLLED_BACK:
            outcome = f"{state.id} was rolled back: {_esc(state.failure)}"
        case ReleaseStatus.REJECTED:
            outcome = f"{state.id} was rejected: {_esc(state.failure)}"
        case _:
            outcome = f"{state.id} FAILED and needs a person: {_esc(state.failure)}"
    return Reply(progress + outcome, in_channel=True)


def _progress_line(message: Envelope, actors: Mapping[str, str]) -> _Line | None:
    """What a person following the release in chat wants to hear of; None for the rest.

    ``actors`` are the timeline's actors by message id: the coordinator records an
    approval or a pause as its own event, caused by the person's command.
    """
    cause = message.causation_id
    actor = _esc(actors.get(cause, message.actor) if cause else message.actor)
    return _waiting_line(message, actor) or _component_line(message)


def _waiting_line(message: Envelope, actor: str) -> _Line | None:
    p, rid = message.payload, message.release_id
    match p:
        case ReleaseQueued(behind=behind):
            return _Line(f"queued behind {', '.join(behind)}")
        case ApprovalRequested(component=component, reason=reason):
            what = component or "the release"
            return _Line(f"waiting for approval of {what}: {_esc(reason)} (`approve {rid}`)", True)
        case ComponentHeld(service=service, reason=reason):
            return _Line(
                f"{service} waits for a person: {_esc(reason)} (`approve {rid}` or `abort {rid}`)",
                True,
            )
        case ReleaseApproved(comment=comment):
            return _Line(f"approved by {actor}" + (f": {_esc(comment)}" if comment else ""))
        case ReleasePaused(reason=reason):
            return _Line(f"paused by {actor}" + (f": {_esc(reason)}" if reason else ""))
        case ReleaseResumed():
            return _Line(f"resumed by {actor}")
        case ReleaseRetried(attempt=attempt):
            return _Line(f"attempt {attempt} started by {actor}")
    return None


def _component_line(message: Envelope) -> _Line | None:
    p = message.payload
    match p:
        case ComponentDeployed(service=service, version=version):
            return _Line(f"{service}@{version} deployed")
        case FlagToggled(service=service, flag=flag, enabled=enabled, undo=undo):
            return _Line(f"flag {service}.{flag} {'on' if enabled else 'off'}{_undo(undo)}")
        case ComponentFailed(service=service, version=version, reason=reason):
            return _Line(f"{service}@{version} failed: {_esc(reason)}")
        case FlagToggleFailed(service=service, flag=flag, reason=reason):
            return _Line(f"flag {service}.{flag} failed: {_esc(reason)}")
        case ComponentRolledBack(service=service, to_versions=versions):
            return _Line(f"{service} rolled back to {', '.join(sorted(set(versions.values())))}")
        case ComponentRollbackFailed(service=service, reason=reason, hosts=hosts):
            return _Line(
                f"{service} could NOT be rolled back: {_esc(reason)} (hosts: {', '.join(hosts)})",
                True,
            )
        case DeadlinePassed(service=service, waited_for=waited_for):
            return _Line(f"{service}: no word in time ({_esc(waited_for)})")
    return None


def _undo(undo: bool) -> str:
    return " (put back)" if undo else ""
