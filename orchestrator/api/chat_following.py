"""Following a release to a slash command's ``response_url``.

Nothing in a command waits for a release: a deploy is answered at once ("R-… submitted")
and followed in a thread that posts its progress and its result to the command's
``response_url``, which is also where an answer that took longer than Slack's 3 s goes.
A release is followed by one thread across every API process (a lease), and Slack's limit
on posts to a response_url (5 within 30 minutes) is kept: progress is gathered into few
posts, and the last one is kept for the result.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from orchestrator.api.chat_replies import Reply, esc, postable, target_text
from orchestrator.contract import (
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
from orchestrator.observability import get_logger
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import Store, StoreUnavailable
from workers.http_call import NoAnswer, http_request

__all__ = ["Follower", "Poster"]

log = get_logger(__name__)

# response_url: Slack takes up to 5 posts within 30 minutes, then refuses more.
_POSTS_PER_URL: Final = 5
_FOLLOW_FOR_S: Final = 30 * 60
_FOLLOW_POLL_S: Final = 0.5
_PROGRESS_EVERY_S: Final = 20.0  # between two progress posts, unless a person is needed
_FOLLOW_LEASE_S: Final = 30.0
_MAX_FOLLOWERS: Final = 64  # threads following releases at once, per process
_POST_TIMEOUT_S: Final = 5.0
_POST_PAUSES_S: Final = (0.0, 1.0, 3.0)  # before each attempt: a first try, two retries


class Poster:
    """Posts to a response_url: a timeout, a couple of retries, never a redirect followed
    (``http_request`` treats a redirect as an answer)."""

    def post(self, url: str, reply: Reply) -> bool:
        if not postable(url):
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


class Follower:
    """Follows releases in threads, one per release across every API process (a lease)."""

    def __init__(self, store: Store, poster: Poster) -> None:
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

    def _follow(self, following: _Following) -> None:
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
        self, store: Store, poster: Poster, release_id: str, url: str, from_now: bool
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
                target_text(c.service, c.version, c.flag, c.enabled)
                for c in state.components.values()
            )
            outcome = f"{state.id} succeeded: {targets} in {state.environment}."
        case ReleaseStatus.ROLLED_BACK:
            outcome = f"{state.id} was rolled back: {esc(state.failure)}"
        case ReleaseStatus.REJECTED:
            outcome = f"{state.id} was rejected: {esc(state.failure)}"
        case _:
            outcome = f"{state.id} FAILED and needs a person: {esc(state.failure)}"
    return Reply(progress + outcome, in_channel=True)


def _progress_line(message: Envelope, actors: Mapping[str, str]) -> _Line | None:
    """What a person following the release in chat wants to hear of; None for the rest.

    ``actors`` are the timeline's actors by message id: the coordinator records an
    approval or a pause as its own event, caused by the person's command.
    """
    cause = message.causation_id
    actor = esc(actors.get(cause, message.actor) if cause else message.actor)
    return _waiting_line(message, actor) or _component_line(message)


def _waiting_line(message: Envelope, actor: str) -> _Line | None:
    p, rid = message.payload, message.release_id
    match p:
        case ReleaseQueued(behind=behind):
            return _Line(f"queued behind {', '.join(behind)}")
        case ApprovalRequested(component=component, reason=reason):
            what = component or "the release"
            return _Line(f"waiting for approval of {what}: {esc(reason)} (`approve {rid}`)", True)
        case ComponentHeld(service=service, reason=reason):
            return _Line(
                f"{service} waits for a person: {esc(reason)} (`approve {rid}` or `abort {rid}`)",
                True,
            )
        case ReleaseApproved(comment=comment):
            return _Line(f"approved by {actor}" + (f": {esc(comment)}" if comment else ""))
        case ReleasePaused(reason=reason):
            return _Line(f"paused by {actor}" + (f": {esc(reason)}" if reason else ""))
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
            return _Line(f"{service}@{version} failed: {esc(reason)}")
        case FlagToggleFailed(service=service, flag=flag, reason=reason):
            return _Line(f"flag {service}.{flag} failed: {esc(reason)}")
        case ComponentRolledBack(service=service, to_versions=versions):
            return _Line(f"{service} rolled back to {', '.join(sorted(set(versions.values())))}")
        case ComponentRollbackFailed(service=service, reason=reason, hosts=hosts):
            return _Line(
                f"{service} could NOT be rolled back: {esc(reason)} (hosts: {', '.join(hosts)})",
                True,
            )
        case DeadlinePassed(service=service, waited_for=waited_for):
            return _Line(f"{service}: no word in time ({esc(waited_for)})")
    return None


def _undo(undo: bool) -> str:
    return " (put back)" if undo else ""
