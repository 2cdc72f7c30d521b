"""Property: any DAG, any outcomes, silent workers, aborts at any time, any order.

Whatever the workers answer, or fail to answer, and whenever someone aborts, the release
reaches exactly one end, and every ordering rule of the saga holds on the way there. A
silent worker's command may be sent again when its deadline passes, and then answered.

Workers may report progress before they answer (or fall silent): as real ones do, they
record their last word in the store, which the coordinator reads for ``CheckDeadlines``
when a deadline comes; it may hold off a resend for a while, never for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    CheckDeadlines,
    ComponentRequest,
    DeadlinePassed,
    DeployComponent,
    Message,
    ReleaseFailed,
    ReleaseRolledBack,
    ReleaseSucceeded,
    RollbackComponent,
    StartRelease,
)
from orchestrator.fleet import Fleet
from orchestrator.saga import MAX_RESENDS, ComponentStatus, ReleaseState, ReleaseStatus, decide
from orchestrator.store import word_key
from tests.unit.builders import (
    OPERATOR,
    PREVIOUS,
    T0,
    component,
    deployed,
    event,
    failed,
    fleet,
    last_words,
    rollback_failed,
    rolled_back,
    submit,
)

COMPONENT_LIMIT = timedelta(seconds=3600)  # the fleet's default component_timeout_s
IN_FLIGHT = {ComponentStatus.DEPLOYING, ComponentStatus.ROLLING_BACK}


@st.composite
def release_graphs(draw: st.DrawFn) -> tuple[ComponentRequest, ...]:
    """A random DAG of up to seven components, listed in a random order."""
    size = draw(st.integers(min_value=1, max_value=7))
    names = [f"s{i}" for i in range(size)]
    components = [
        component(name, *draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else ())
        for i, name in enumerate(names)
    ]
    return tuple(draw(st.permutations(components)))


class _Workers:
    """Plays every worker: answers each command the saga sends (or not), and checks each one."""

    def __init__(self, components: Sequence[ComponentRequest]) -> None:
        self.depends = {c.service: set(c.depends_on) for c in components}
        self.dependents = {
            s: {d for d, deps in self.depends.items() if s in deps} for s in self.depends
        }
        self.deploy_sent: set[str] = set()
        self.rollback_sent: set[str] = set()
        self.deployed: set[str] = set()
        self.rolled_back: set[str] = set()
        self.failed: set[str] = set()
        self.timed_out: set[str] = set()  # deploys the saga gave up waiting for
        self.stuck: set[str] = set()  # rollback failed or timed out, or a failed put-back
        self.silent: set[tuple[str, str]] = set()  # (deploy or rollback, service) never answered
        self.passed: set[tuple[str, str]] = set()  # the same, as the saga's DeadlinePassed named
        self.commands: dict[tuple[str, str], Message] = {}  # the first of each, to compare resends
        self.resends: dict[tuple[str, str], int] = {}
        # What silent workers say after their deadline, by (deploy or rollback, service).
        self.late: list[tuple[tuple[str, str], Message]] = []
        self.aborted = False
        self.endings: list[Message] = []

    def above(self, service: str) -> set[str]:
        """Every component that depends on ``service``, directly or not."""
        found: set[str] = set()
        frontier = [service]
        while frontier:
            for dependent in self.dependents[frontier.pop()]:
                if dependent not in found:
                    found.add(dependent)
                    frontier.append(dependent)
        return found

    def check(self, outgoing: Iterable[Message]) -> None:
        commands_sent = False
        for message in outgoing:
            # After the end, only a person is answered (an abort of what has ended is refused).
            if isinstance(message, ApprovalRefused) and self.endings:
                continue
            assert not self.endings, f"{message!r} sent after {self.endings[0]!r}"
            if isinstance(message, DeadlinePassed):
                assert not commands_sent, "DeadlinePassed after the commands it caused"
                self._passed(message)
            elif isinstance(message, DeployComponent | RollbackComponent):
                commands_sent = True
                kind = "deploy" if isinstance(message, DeployComponent) else "rollback"
                if (kind, message.service) in self.commands:
                    self._resent(kind, message)
                elif isinstance(message, DeployComponent):
                    self._deploy(message)
                else:
                    self._rollback(message)
            elif isinstance(message, ReleaseSucceeded | ReleaseRolledBack | ReleaseFailed):
                self.endings.append(message)

    def _passed(self, message: DeadlinePassed) -> None:
        service = message.service
        kind = "deploy" if service not in self.rollback_sent else "rollback"
        assert message.waited_for == f"{kind} of {service}"
        assert (kind, service) in self.silent, f"{kind} of {service} answered, yet late"
        assert (kind, service) not in self.passed, f"{kind} of {service} late twice"
        self.passed.add((kind, service))
        (self.timed_out if kind == "deploy" else self.stuck).add(service)

    def _resent(self, kind: str, message: DeployComponent | RollbackComponent) -> None:
        """The same command again, for want of an answer: the first is taken as lost."""
        key = (kind, message.service)
        assert message == self.commands[key], f"{kind} resent with another payload"
        assert key in self.silent, f"{kind} of {key[1]} answered, yet resent"
        assert key not in self.passed, f"{kind} of {key[1]} resent after it was late"
        self.resends[key] = self.resends.get(key, 0) + 1
        assert self.resends[key] <= MAX_RESENDS, f"{kind} of {key[1]} resent too often"
        self.silent.discard(key)
        self.late = [(k, word) for k, word in self.late if k != key]

    def _deploy(self, message: DeployComponent) -> None:
        service = message.service
        assert not self.failed, f"{service} started after a failure"
        assert not self.timed_out, f"{service} started after a deploy timed out"
        assert not self.aborted, f"{service} started after an abort"
        assert self.depends[service] <= self.deployed
        assert service not in self.deploy_sent
        self.deploy_sent.add(service)
        self.commands["deploy", service] = message

    def _rollback(self, message: RollbackComponent) -> None:
        service = message.service
        holding = self.deployed | self.timed_out
        assert service in holding, f"{service} rolled back, never deployed nor timed out"
        assert service not in self.rollback_sent
        assert self.dependents[service] & holding <= self.rolled_back
        assert not self.above(service) & self.stuck, f"{service} is pinned"
        # Only a deploy's outcome tells the saga its hosts' previous versions; the rollback
        # of a timed-out deploy has none, its worker reads what the deploying one recorded.
        assert message.to_versions == (PREVIOUS if service in self.deployed else {})
        self.rollback_sent.add(service)
        self.commands["rollback", service] = message

    def answer(self, command: Message, data: st.DataObject) -> tuple[str | None, list[Message]]:
        """What the worker says now: the key of the word it records in the store first, if it
        reports progress, and its outcome; a silent one may say that after its deadline."""
        manner = data.draw(st.sampled_from(["answers", "answers", "answers", "silent", "late"]))
        assert isinstance(command, DeployComponent | RollbackComponent)
        rollback = isinstance(command, RollbackComponent)
        word = word_key(command.service, rollback=rollback, attempt=command.attempt)
        reports = data.draw(st.booleans(), label="reports progress")
        if isinstance(command, DeployComponent):
            said = self._deploy_answer(command.service, manner, data)
        else:
            said = self._rollback_answer(command.service, manner, data)
        return (word if reports else None), said

    def _deploy_answer(self, service: str, manner: str, data: st.DataObject) -> list[Message]:
        outcome = data.draw(st.sampled_from(["deployed", "failed", "unrestored"]))
        said = (
            deployed(service)
            if outcome == "deployed"
            else failed(service, restored=outcome == "failed")
        )
        if manner != "answers":
            self.silent.add(("deploy", service))
            self.late += [(("deploy", service), said)] if manner == "late" else []
            return []
        if outcome == "deployed":
            self.deployed.add(service)
        else:
            self.failed.add(service)
            if outcome == "unrestored":
                self.stuck.add(service)
        return [said]

    def _rollback_answer(self, service: str, manner: str, data: st.DataObject) -> list[Message]:
        done = data.draw(st.booleans())
        said = rolled_back(service) if done else rollback_failed(service)
        if manner != "answers":
            self.silent.add(("rollback", service))
            self.late += [(("rollback", service), said)] if manner == "late" else []
            return []
        (self.rolled_back if done else self.stuck).add(service)
        return [said]


def _check_invariants(state: ReleaseState | None) -> None:
    """Only a component in flight has a deadline, and never past its component limit."""
    assert state is not None
    for part in state.components.values():
        if part.status in IN_FLIGHT:
            assert part.deadline is not None, f"{part.service} in flight with no deadline"
            assert part.sent_at is not None
            assert part.sent_at < part.deadline <= part.sent_at + COMPONENT_LIMIT
        else:
            assert part.deadline is None, f"{part.service} {part.status} has a deadline"
    deadlines = [p.deadline for p in state.components.values() if p.deadline is not None]
    assert state.next_deadline == min(deadlines, default=None)


class _Run:
    """One release, driven message by message against the workers' checks."""

    def __init__(self, components: Sequence[ComponentRequest], data: st.DataObject) -> None:
        self.fleet: Fleet = fleet(*(c.service for c in components))
        self.workers = _Workers(components)
        self.data = data
        self.state: ReleaseState | None = None
        self.seconds = 0
        self.pending: list[Message] = []  # commands sent that no worker took yet
        self.delivered: list[Message] = []
        self.words: dict[str, datetime] = {}  # the store's last words, by word_key

    @property
    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.seconds)

    def deliver(self, payload: Message, *, actor: str = "ci") -> tuple[Message, ...]:
        self.seconds += 1
        decision = decide(self.state, event(payload, at=self.now, actor=actor), self.fleet)
        self.workers.check(decision.outgoing)
        self.state = decision.state
        _check_invariants(self.state)
        self.pending += [
            m for m in decision.outgoing if isinstance(m, DeployComponent | RollbackComponent)
        ]
        return decision.outgoing

    def abort(self) -> None:
        self.workers.aborted = True
        self.deliver(AbortRelease(reason="chaos"), actor=OPERATOR)

    def work(self) -> None:
        """A worker takes one of the commands sent, at random, and answers it, or not."""
        index = self.data.draw(st.integers(0, len(self.pending) - 1), label="next")
        command = self.pending.pop(index)
        word, replies = self.workers.answer(command, self.data)
        if word is not None:  # recorded in the store; the saga hears nothing of it
            self.seconds += 1
            self.words[word] = self.now
        for reply in replies:
            self.deliver(reply)
            self.delivered.append(reply)

    def redeliver(self) -> None:
        """An old reply again: the bus delivers at least once."""
        old = self.data.draw(st.sampled_from(self.delivered))
        before = self.state
        assert self.deliver(old) == ()
        assert self.state == before

    def check_deadlines(self, at: datetime) -> tuple[Message, ...]:
        """The coordinator's look at the deadlines at ``at``, with the last words it read."""
        assert self.state is not None
        self.seconds = int((at - T0).total_seconds()) - 1
        return self.deliver(
            CheckDeadlines(now=at, last_words=last_words(self.state, at, self.words))
        )

    def wait_for_the_next_deadline(self) -> None:
        """Nothing comes: the coordinator's clock reaches the next deadline, no further.

        The saga moves the deadlines of workers heard from within a step, sends overdue
        commands again (those it then gives up on are named), and the workers may answer
        them this time.
        """
        assert self.state is not None
        due = self.state.next_deadline
        assert due is not None, "nothing in flight and nothing to send, yet no end"
        at = max(due, self.now + timedelta(seconds=1))
        outgoing = self.check_deadlines(at)
        after = self.state.next_deadline
        moved = after is not None and after > at
        assert outgoing or moved, f"the deadline {due} passed and nothing was done"

    def wait_out_the_deadlines(self) -> None:
        """Nothing more comes: the coordinator's clock passes every deadline."""
        outgoing = self.check_deadlines(self.now + timedelta(seconds=86_400))
        assert outgoing, "nothing in flight and nothing to send, yet no end"
        assert self.workers.passed == self.workers.silent
        for _, late in self.workers.late:  # what the silent workers say now changes nothing
            before = self.state
            assert self.deliver(late) == ()
            assert self.state == before
        self.workers.late.clear()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(components=release_graphs(), data=st.data())
def test_any_release_runs_to_an_end_in_dependency_order(
    components: tuple[ComponentRequest, ...], data: st.DataObject
) -> None:
    run = _Run(components, data)
    run.deliver(submit(*components))
    if data.draw(st.booleans(), label="abort while queued"):
        run.abort()
    run.deliver(StartRelease())
    for _ in range(200):
        assert run.state is not None
        if run.state.status.is_terminal:
            break
        if run.pending:
            run.work()
        elif data.draw(st.booleans(), label="wait only for the next deadline"):
            run.wait_for_the_next_deadline()
        else:
            run.wait_out_the_deadlines()
        again = data.draw(st.booleans(), label="redeliver an old reply")
        if again and run.delivered:
            run.redeliver()
        if data.draw(st.integers(0, 9), label="abort now (0)") == 0:
            run.abort()
    _check_the_end(run)


def _check_the_end(run: _Run) -> None:
    state, workers = run.state, run.workers
    assert state is not None
    assert state.status.is_terminal, state.status
    assert not run.pending, "an end with commands still unanswered"
    assert state.next_deadline is None
    assert len(workers.endings) == 1
    (ending,) = workers.endings
    left = (workers.deployed | workers.timed_out) - workers.rolled_back
    if state.status is ReleaseStatus.SUCCEEDED:
        assert isinstance(ending, ReleaseSucceeded)
        assert workers.deployed == set(workers.depends)
        assert not workers.rollback_sent
    elif state.status is ReleaseStatus.ROLLED_BACK:
        assert isinstance(ending, ReleaseRolledBack)
        assert workers.failed or workers.timed_out or workers.aborted
        assert not left
        assert not workers.stuck
        assert state.aborted_by in (None, OPERATOR)
    else:
        assert state.status is ReleaseStatus.FAILED
        assert isinstance(ending, ReleaseFailed)
        assert workers.stuck
        named = {entry.split(":")[0] for entry in ending.needs_attention}
        assert left | workers.stuck <= named
        for service in left - workers.stuck:  # left alone only because something above is stuck
            assert workers.above(service) & workers.stuck
