"""One light for on-call: green, amber or red, and every reason for it.

``gather`` reads what the light is made of (recent releases and their last word, queues,
dead letters), and ``judge`` turns those facts into the light, a pure function so that
every reason can be tried without waiting for it to happen. Red: something needs a person
now (a release that could not be put back, a stuck release, a queue nobody consumes,
flat-lined business signals, the broker or store gone). Amber: worth a look (a release
waiting for a person, paused or rolled back lately, dead letters, a queue backing up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from orchestrator.bus import BrokerUnavailable
from orchestrator.contract import Envelope, GateJudged
from orchestrator.manual_locks import ManualLock, current
from orchestrator.queues import QueueDepth, queue_depths
from orchestrator.saga import ReleaseState, ReleaseStatus
from orchestrator.store import StoreUnavailable

if TYPE_CHECKING:
    from orchestrator.runtime import Parts

__all__ = [
    "Facts",
    "Light",
    "Reason",
    "ReleaseFacts",
    "Thresholds",
    "flat_lines",
    "gather",
    "judge",
]


class Light(IntEnum):
    """The colour, and the exit code of ``drover status``."""

    GREEN = 0
    AMBER = 1
    RED = 2


@dataclass(frozen=True)
class Reason:
    light: Light
    what: str  # a short kind: "release failed", "queue old", ...
    detail: str  # in words, naming the release, queue or service


@dataclass(frozen=True)
class Thresholds:
    recent: timedelta = timedelta(hours=1)  # a rollback or a flat line this recent shows
    failed_for: timedelta = timedelta(hours=24)  # a release not put back stays red so long
    stuck_after: timedelta = timedelta(minutes=10)  # a running release silent this long
    queue_amber: int = 100  # messages waiting
    age_amber_s: float = 60  # oldest waiting message
    age_red_s: float = 300


@dataclass(frozen=True)
class ReleaseFacts:
    state: ReleaseState
    last_word: datetime | None  # when its timeline last grew
    flat_lines: tuple[str, ...] = ()  # gates that failed comparing with before the deploy


@dataclass(frozen=True)
class Facts:
    now: datetime
    releases: Sequence[ReleaseFacts] = ()
    queues: Sequence[QueueDepth] = ()
    dead_letters: int = 0
    unreachable: Sequence[str] = ()  # "broker: …", "store: …"
    locks: Sequence[ManualLock] = ()  # services people hold by hand


_RELEASES_LOOKED_AT: Final = 200  # the newest; older ones have ended long ago
_WAITING_FOR_PEOPLE: Final = (ReleaseStatus.AWAITING_APPROVAL, ReleaseStatus.PAUSED)
_IN_FLIGHT: Final = (ReleaseStatus.RUNNING, ReleaseStatus.COMPENSATING)


def judge(facts: Facts, limits: Thresholds = Thresholds()) -> tuple[Light, list[Reason]]:
    """The light and its reasons, worst first."""
    reasons = [
        *(Reason(Light.RED, "unreachable", what) for what in facts.unreachable),
        *(r for release in facts.releases for r in _release_reasons(release, facts, limits)),
        *(r for queue in facts.queues for r in _queue_reasons(queue, facts, limits)),
    ]
    for held in facts.locks:
        until = f" until {held.until:%H:%M} UTC" if held.until else ""
        detail = f"{held.environment}/{held.service} by {held.owner}{until}: {held.reason}"
        reasons.append(Reason(Light.AMBER, "locked", detail))
    if facts.dead_letters:
        detail = f"{facts.dead_letters} dead letter(s) waiting: drover dead-letters"
        reasons.append(Reason(Light.AMBER, "dead letters", detail))
    reasons.sort(key=lambda r: -r.light)
    return max((r.light for r in reasons), default=Light.GREEN), reasons


def _release_reasons(release: ReleaseFacts, facts: Facts, limits: Thresholds) -> list[Reason]:
    state = release.state
    found: list[Reason] = []
    recent = state.finished_at is not None and facts.now - state.finished_at <= limits.recent
    failed_lately = (
        state.finished_at is not None and facts.now - state.finished_at <= limits.failed_for
    )
    if state.status is ReleaseStatus.FAILED and failed_lately:
        detail = f"{state.id} could not be put back: {state.failure}"
        found.append(Reason(Light.RED, "release failed", detail))
    elif state.status is ReleaseStatus.ROLLED_BACK and recent:
        found.append(Reason(Light.AMBER, "release rolled back", f"{state.id}: {state.failure}"))
    elif state.status in _WAITING_FOR_PEOPLE or state.waiting_for_approval:
        # A component waiting to be approved leaves its release running, and silent: that
        # is a person's turn, not a stuck release.
        waits = ", ".join(state.waiting_for_approval) or f"paused by {state.paused_by}"
        found.append(Reason(Light.AMBER, "waiting for a person", f"{state.id}: {waits}"))
    elif state.status in _IN_FLIGHT and release.last_word is not None:
        silent = facts.now - release.last_word
        if silent > limits.stuck_after:
            minutes = int(silent.total_seconds() // 60)
            detail = f"{state.id} ({state.status}) has not moved for {minutes} min"
            found.append(Reason(Light.RED, "release stuck", detail))
    if release.flat_lines and (recent or not state.status.is_terminal):
        detail = f"{state.id}: {', '.join(release.flat_lines)} fell against before the deploy"
        found.append(Reason(Light.RED, "business signal flat-lined", detail))
    return found


def _queue_reasons(queue: QueueDepth, facts: Facts, limits: Thresholds) -> list[Reason]:
    name, ready, age = queue["name"], queue["ready"], queue["oldest_age_s"]
    found: list[Reason] = []
    if queue["consumers"] == 0:  # only RabbitMQ can tell; Redis says None
        light = Light.RED if ready else Light.AMBER
        who = "the coordinator" if name.endswith((".commands", ".coordinator")) else "a worker"
        detail = f"{name}: nothing consumes it, is {who} down? ({ready} waiting)"
        found.append(Reason(light, "no consumer", detail))
    if age is not None and age > limits.age_amber_s:
        light = Light.RED if age > limits.age_red_s else Light.AMBER
        found.append(Reason(light, "queue old", f"{name}: oldest message waits {age:.0f} s"))
    if ready > limits.queue_amber:
        found.append(Reason(Light.AMBER, "queue backing up", f"{name}: {ready} waiting"))
    return found


def gather(parts: Parts, now: datetime, limits: Thresholds = Thresholds()) -> Facts:
    """What the light is made of, read from the store and the broker; what cannot be read
    becomes a reason of its own."""
    unreachable: list[str] = []
    releases: list[ReleaseFacts] = []
    dead_letters = 0
    locks: list[ManualLock] = []
    try:
        for state in parts.store.releases(limit=_RELEASES_LOOKED_AT):
            ended_long_ago = state.finished_at is not None and now - state.finished_at > max(
                limits.recent, limits.failed_for
            )
            if ended_long_ago:
                continue
            timeline = parts.store.timeline(state.id)
            last_word = max((m.occurred_at for m in timeline), default=None)
            releases.append(ReleaseFacts(state, last_word, flat_lines(timeline)))
        dead_letters = len(parts.store.dead_letters())
        locks = current(parts.store)
    except StoreUnavailable as exc:
        unreachable.append(f"store: {exc}")
    queues: list[QueueDepth] = []
    try:
        queues = queue_depths(parts)
    except BrokerUnavailable as exc:
        unreachable.append(f"broker: {exc}")
    return Facts(now, releases, queues, dead_letters, unreachable, locks)


def flat_lines(timeline: Sequence[Envelope]) -> tuple[str, ...]:
    """Gates that failed comparing a signal with before the deploy: a flat line."""
    names = []
    for message in timeline:
        payload = message.payload
        if (
            isinstance(payload, GateJudged)
            and payload.verdict == "fail"
            and "min_ratio_to_before" in payload.thresholds
        ):
            names.append(f"{payload.service} {payload.gate}")
    return tuple(dict.fromkeys(names))
