"""``POST /chatops/slack``: Drover driven from a Slack-compatible slash command.

The request is checked before anything is read from it: without a configured signing
secret every request is refused (401), and a request whose signature or timestamp does
not verify is refused (401, with the reason and never the secret). What is left is Slack's
form, read into a :class:`~orchestrator.api.chat_replies.SlashCommand` (400 if it is not
that form), and carried out by :class:`~orchestrator.api.chat_commands.Commands`.

Slack waits 3 s for an answer. A command that takes longer than the answer can wait (a
slow broker, a host that is slow to say its version) is answered "working on it" and its
answer is posted to ``response_url`` when it comes (``orchestrator.api.chat_following``).
"""

# No "from __future__ import annotations": FastAPI reads the route's annotations at run time.
import asyncio
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orchestrator.api.chat_commands import Commands
from orchestrator.api.chat_following import Follower, Poster
from orchestrator.api.chat_replies import Reply, SlashCommand, postable
from orchestrator.chatops.signature import SignatureRefused, verify
from orchestrator.runtime import Parts

__all__ = ["PATH", "chatops_router"]

PATH: Final = "/chatops/slack"

# Slack gives up on an answer after 3 s; what is not ready by then follows by response_url.
_ANSWER_WITHIN_S: Final = 2.5
_MAX_BODY: Final = 64 * 1024  # Slack's form is a few hundred bytes; more is not Slack

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


class _NotSlackForm(Exception):
    """A signed body that is not the form of a slash command."""


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
        poster = Poster()
        self._commands = Commands(parts, Follower(parts.store, poster))
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
    if not postable(fields["response_url"]):
        raise _NotSlackForm("response_url is not an http(s) URL")
    return SlashCommand(**fields)


def _one(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name)
    if values is None:
        raise _NotSlackForm(f"the form has no {name}")
    if len(values) != 1:
        raise _NotSlackForm(f"{name} is given {len(values)} times")
    return values[0]
