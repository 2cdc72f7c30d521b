"""Small builders for unit tests: a fleet, a release request and an envelope, in one line each.

Also what workers report, ways to read what the saga sent, and :class:`Release`, which
drives one release through the saga as the coordinator would: outcomes go to the saga, while
progress reports only leave a worker's last word in the store, which the coordinator reads
when a deadline comes (:func:`last_words`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.contract import (
    AbortRelease,
    CheckDeadlines,
    ComponentDeployed,
    ComponentFailed,
    ComponentRequest,
    ComponentRollbackFailed,
    ComponentRolledBack,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    DeployComponent,
    Envelope,
    Message,
    RollbackComponent,
    StartRelease,
    Step,
    StepFailed,
    StepStarted,
    StepSucceeded,
    SubmitRelease,
    envelope,
)
from orchestrator.fleet import Fleet
from orchestrator.saga import (
    ComponentState,
    ComponentStatus,
    ReleaseState,
    ReleaseStatus,
    decide,
    overdue,
)
from orchestrator.store import awaited_word, word_key

ENVIRONMENT = "prod"
RELEASE_ID = "R-1"
ACTOR = "ci"
OPERATOR = "alice"  # a person who aborts a release
HOSTS = ("h1", "h2")
OLD_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def service_config(hosts: Sequence[str] = HOSTS, **changes: Any) -> dict[str, Any]:
    """A service of the fleet file, as the YAML would read, with ``changes`` on top."""
    return {
        "hosts": list(hosts),
        "driver": {"kind": "simulated", "initial_version": OLD_VERSION},
        **changes,
    }


def fleet_data(*services: str, environment: str = ENVIRONMENT, **changes: Any) -> dict[str, Any]:
    """A fleet file's content with one environment holding ``services``, each with ``changes``."""
    services_data = {name: service_config(**changes) for name in services}
    return {"environments": {environment: {"services": services_data}}}


def fleet(*services: str, environment: str = ENVIRONMENT, **changes: Any) -> Fleet:
    """A fleet of ``services``; ``changes`` (``step_timeout_s=60``, ...) apply to each."""
    return Fleet.model_validate(fleet_data(*services, environment=environment, **changes))


def component(service: str, *depends_on: str, version: str = NEW_VERSION) -> ComponentRequest:
    return ComponentRequest(service=service, version=version, depends_on=depends_on)


def submit(
    *components: ComponentRequest,
    environment: str = ENVIRONMENT,
    reason: str = "test",
    requires_approval: bool = False,
) -> SubmitRelease:
    return SubmitRelease(
        environment=environment,
        reason=reason,
        components=components,
        requires_approval=requires_approval,
    )


def event(
    payload: Message,
    *,
    release_id: str = RELEASE_ID,
    at: datetime = T0,
    message_id: str | None = None,
    actor: str = ACTOR,
) -> Envelope:
    """Wrap a payload as it would arrive off the bus: fixed clock, deterministic id."""
    text = f"{at.isoformat()} {actor} {payload.model_dump_json()}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    identity = message_id or f"{type(payload).__name__}-{digest}"
    return envelope(
        payload, release_id=release_id, actor=actor, message_id=identity, occurred_at=at
    )


def opening(
    *components: ComponentRequest, at: datetime = T0, environment: str = ENVIRONMENT
) -> tuple[Envelope, Envelope]:
    """How every release that runs begins: its submission, then ``StartRelease``.

    The coordinator sends ``StartRelease`` once the release holds the locks of all its
    services; until then the release is queued and starts nothing.
    """
    return (
        event(submit(*components, environment=environment), at=at),
        event(StartRelease(), at=at),
    )


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- what workers report ------------------------------------------------------------------
#
# Progress reports (started, waiting, steps) go to the store, not to the saga: a test that
# wants a worker heard from records its word (``Release.report``); the builders below are
# for tests that show the saga makes nothing of them.

PREVIOUS = {"h1": OLD_VERSION, "h2": "1.0.1"}  # hosts may have run different versions


def started(service: str) -> ComponentStarted:
    return ComponentStarted(
        environment=ENVIRONMENT, service=service, version=NEW_VERSION, previous_versions=PREVIOUS
    )


def waiting(service: str) -> ComponentWaiting:
    """The worker has the command but another holds the component still."""
    return ComponentWaiting(environment=ENVIRONMENT, service=service, holder="R-0")


def deployed(service: str, previous: dict[str, str] | None = None) -> ComponentDeployed:
    return ComponentDeployed(
        environment=ENVIRONMENT,
        service=service,
        version=NEW_VERSION,
        previous_versions=PREVIOUS if previous is None else previous,
    )


def failed(service: str, *, restored: bool = True) -> ComponentFailed:
    return ComponentFailed(
        environment=ENVIRONMENT,
        service=service,
        version=NEW_VERSION,
        reason="verify failed on h2",
        restored=restored,
    )


def rolled_back(service: str) -> ComponentRolledBack:
    return ComponentRolledBack(environment=ENVIRONMENT, service=service, to_versions=PREVIOUS)


def rollback_failed(service: str) -> ComponentRollbackFailed:
    return ComponentRollbackFailed(
        environment=ENVIRONMENT, service=service, reason="h2 did not come back", hosts=("h2",)
    )


def step_started(service: str, *, rollback: bool = False) -> StepStarted:
    return StepStarted(
        environment=ENVIRONMENT,
        service=service,
        step=Step.DRAIN,
        batch=1,
        hosts=HOSTS,
        rollback=rollback,
    )


def step_succeeded(service: str, *, rollback: bool = False) -> StepSucceeded:
    return StepSucceeded(
        environment=ENVIRONMENT,
        service=service,
        step=Step.DEPLOY,
        batch=1,
        hosts=HOSTS,
        rollback=rollback,
        duration_ms=1500,
    )


def step_failed(service: str, *, rollback: bool = False) -> StepFailed:
    return StepFailed(
        environment=ENVIRONMENT,
        service=service,
        step=Step.VERIFY,
        batch=1,
        hosts=HOSTS,
        rollback=rollback,
        host="h1",
        reason="unhealthy",
    )


def last_words(
    state: ReleaseState, now: datetime, words: Mapping[str, datetime]
) -> dict[str, datetime]:
    """What the coordinator puts in ``CheckDeadlines.last_words`` at ``now``.

    As ``Coordinator._last_words`` does: for each component overdue by ``now``, the last
    word recorded (``words``, by :func:`~orchestrator.store.word_key`) under the key of the
    command the saga waits for on it, by component name; those never heard from are absent.
    """
    awaited = {awaited_word(c): c.name for c in overdue(state, now)}
    return {name: words[word] for word, name in awaited.items() if word in words}


# --- reading what the saga sent -----------------------------------------------------------


def deploys(outgoing: Iterable[Message]) -> list[str]:
    return [m.service for m in outgoing if isinstance(m, DeployComponent)]


def rollbacks(outgoing: Iterable[Message]) -> list[str]:
    return [m.service for m in outgoing if isinstance(m, RollbackComponent)]


def timeline(outgoing: Iterable[Message]) -> list[str]:
    """What the saga sent, one short line a message, to read a whole run at a glance."""
    lines = []
    for message in outgoing:
        match message:
            case DeployComponent(service=service):
                lines.append(f"deploy {service}")
            case RollbackComponent(service=service):
                lines.append(f"rollback {service}")
            case DeadlinePassed(waited_for=waited_for):
                lines.append(f"late: {waited_for}")
            case _:
                lines.append(type(message).__name__)
    return lines


class Release:
    """One release driven through ``decide``, as the coordinator would, one message at a time.

    The release is submitted, then started (``start=False`` leaves it queued). Every message
    arrives ``wait`` seconds after the one before (one, unless told); ``settings`` apply to
    every service of the fleet (``step_timeout_s=60``, ...). ``approval`` is the
    environment's approval policy; ``requires_approval`` the submission's own ask.

    ``words`` stands for the store's last words of the workers (:meth:`report`), read by
    :meth:`check_deadlines` as the coordinator reads them.
    """

    def __init__(
        self,
        *components: ComponentRequest,
        services: Sequence[str] = (),
        start: bool = True,
        approval: dict[str, bool] | None = None,
        requires_approval: bool = False,
        **settings: Any,
    ) -> None:
        names = services or sorted({c.service for c in components})
        data = fleet_data(*names, **settings)
        if approval is not None:
            data["environments"][ENVIRONMENT]["approval"] = approval
        self.fleet: Fleet = Fleet.model_validate(data)
        self.sent: list[Message] = []
        self.state: ReleaseState | None = None
        self.words: dict[str, datetime] = {}  # word_key -> when a worker last reported
        self.clock: float = 0  # seconds after T0
        self.accepted = self.send(submit(*components, requires_approval=requires_approval))
        self.first = self.start() if start else ()

    @property
    def now(self) -> datetime:
        return later(self.clock)

    def send(self, payload: Message, *, wait: float = 1, actor: str = ACTOR) -> tuple[Message, ...]:
        self.clock += wait
        decision = decide(self.state, event(payload, at=self.now, actor=actor), self.fleet)
        self.state = decision.state
        self.sent.extend(decision.outgoing)
        return decision.outgoing

    def start(self) -> tuple[Message, ...]:
        """The coordinator's word that the release now holds the locks of all its services."""
        return self.send(StartRelease())

    def abort(self, reason: str = "wrong build", *, actor: str = OPERATOR) -> tuple[Message, ...]:
        return self.send(AbortRelease(reason=reason), actor=actor)

    def report(
        self, service: str, *, rollback: bool = False, attempt: int | None = None, wait: float = 1
    ) -> None:
        """``service``'s worker reports progress ``wait`` seconds on; the saga hears nothing.

        The worker records its word in the store under its own command's key: ``rollback``
        if that command is a rollback (whatever the component's status is now), and the
        component's attempt unless told (a worker of an earlier run says its own).
        """
        self.clock += wait
        attempt = self.part(service).attempt if attempt is None else attempt
        self.words[word_key(service, rollback=rollback, attempt=attempt)] = self.now

    def check_deadlines(self, at: datetime) -> tuple[Message, ...]:
        """The coordinator's look at the deadlines, as of ``at``, with the last words it read."""
        check = CheckDeadlines(now=at, last_words=last_words(self.release, at, self.words))
        return self.send(check, wait=(at - self.now).total_seconds())

    @property
    def status(self) -> ReleaseStatus:
        return self.release.status

    @property
    def release(self) -> ReleaseState:
        assert self.state is not None
        return self.state

    def part(self, service: str) -> ComponentState:
        return self.release.components[service]

    def component(self, service: str) -> ComponentStatus:
        return self.part(service).status

    def deadline(self, service: str) -> datetime:
        deadline = self.part(service).deadline
        assert deadline is not None, f"{service} has no deadline"
        return deadline
