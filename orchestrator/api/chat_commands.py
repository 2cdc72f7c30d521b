"""The chat commands behind ``POST /chatops/slack``: deploy, the decisions on a release
(approve, reject, abort, pause, resume, retry), status, queues, where, plan (a dry-run
deploy), lock, unlock and help.

Each is carried out with short timeouts and answered with a reply, never an exception.
Nothing here waits for a release: a deploy is checked, planned and submitted, answered at
once ("R-… submitted"), and followed by :class:`~orchestrator.api.chat_following.Follower`.

Everyone is known as ``slack:<user name>`` in timelines and locks; access is checked with
the user id and the user name (``orchestrator.chatops.access``). Slack retries a request
it got no answer to, and people post the same command twice: a deploy takes a lease named
after the person and the command, so neither starts a second release (see ``Commands._claim``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from orchestrator.api.chat_following import Follower
from orchestrator.api.chat_replies import Reply, SlashCommand, code_block, esc, target_text
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
from orchestrator.client import Client, fleet_versions
from orchestrator.contract import ApprovalRefused
from orchestrator.fleet import EnvironmentConfig, Fleet
from orchestrator.manual_locks import LockHeld, ManualLock, NotLocked, NotYours, lock, unlock
from orchestrator.narration import describe
from orchestrator.observability import get_logger
from orchestrator.plan_view import plan_lines, plan_view
from orchestrator.plans import InvalidInput, plan_release
from orchestrator.queues import queue_depths
from orchestrator.runtime import Parts
from orchestrator.saga import ReleaseState
from orchestrator.status import gather, judge
from orchestrator.store import Store, StoreUnavailable

__all__ = ["Commands"]

log = get_logger(__name__)

# Slack gives up on an answer after 3 s: the coordinator's answer to a decision is waited
# for less than that, and what is not ready by then follows by response_url.
_DECIDE_TIMEOUT_S: Final = 2.0
# The window in which the same command by the same person is the same request.
_SAME_COMMAND_S: Final = 60.0

_PAST: Final = {
    "approve": "approved",
    "reject": "rejected",
    "abort": "aborted",
    "pause": "paused",
    "resume": "resumed",
    "retry": "retried",
}


class Commands:
    """Each command, carried out with short timeouts; a reply, never an exception."""

    def __init__(self, parts: Parts, follower: Follower) -> None:
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
        return Reply(f"There is no environment `{esc(name)}`; there are: {known}.")

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
        return Reply(code_block(list(plan_lines(view))))

    def _deploy(self, slash: SlashCommand, command: Deploy) -> Reply:
        environment = self._environment(command.environment)
        if environment is None:
            return self._unknown_environment(command.environment)
        verdict = self._verdict(slash, environment, command, command.services)
        if not verdict:
            return Reply(f"Not deployed: {esc(verdict.reason)}.")
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
            return Reply(f"I know no release `{esc(command.release_id)}`.")
        environment = self._environment(stored.state.environment)
        verdict = self._verdict(slash, environment, command)
        if not verdict:
            return Reply(f"Not done: {esc(verdict.reason)}.")
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
            return Reply(f"Not done: {esc(refusals[0].reason)}.")
        if command.kind == "retry":  # the release runs again: follow it again
            self._follower.start(command.release_id, slash.response_url, from_now=True)
        text = f"{slash.actor} {_PAST[command.kind]} {command.release_id}."
        if caused:
            text += "\n" + code_block([describe(m) for m in caused])
        return Reply(text, in_channel=True)

    # --- reading -------------------------------------------------------------------------------

    def _status(self, command: Status) -> Reply:
        if command.release_id is not None:
            stored = self._store.load(command.release_id)
            if stored is None:
                return Reply(f"I know no release `{esc(command.release_id)}`.")
            return Reply(code_block(_release_lines(stored.state)))
        light, reasons = judge(gather(self._parts, datetime.now(UTC)))
        lines = [f"Drover is {light.name.lower()}."]
        lines += [f"• {r.light.name.lower()}: {esc(r.what)}: {esc(r.detail)}" for r in reasons]
        return Reply("\n".join(lines))

    def _queues(self) -> Reply:
        rows = queue_depths(self._parts)
        lines = [
            f"{row['name']}  ready {row['ready']}  unacked {_unknown(row['unacked'])}"
            f"  consumers {_unknown(row['consumers'])}"
            f"  oldest {_unknown(row['oldest_age_s'])} s"
            for row in rows
        ]
        return Reply(code_block(lines))

    def _where(self, command: Where) -> Reply:
        having = {
            name: environment.model_copy(
                update={"services": {command.service: environment.services[command.service]}}
            )
            for name, environment in self._fleet.environments.items()
            if command.service in environment.services
        }
        if not having:
            return Reply(f"No environment has a service `{esc(command.service)}`.")
        # Only this service's hosts are asked: the others would only cost time.
        narrowed = self._fleet.model_copy(update={"environments": having})
        versions = fleet_versions(narrowed, self._store)
        lines = [
            f"{name}: {_versions_line(hosts[command.service])}" for name, hosts in versions.items()
        ]
        return Reply(f"`{command.service}`:\n" + code_block(lines))

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
            owner = esc(held.holder.owner)
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
                f"Not unlocked: {esc(theirs.holder.owner)} locked {_lock_line(theirs.holder)}."
                " `unlock"
                f" {command.environment}/{command.service} force` lifts it, and says you did."
            )
        text = f"{slash.actor} unlocked {command.environment}/{command.service}"
        if lifted.owner != slash.actor:
            text += f" by force (locked by {esc(lifted.owner)}: {esc(lifted.reason)})"
        return Reply(text + ".", in_channel=True)

    def _may_operate(
        self, slash: SlashCommand, command: Lock | Unlock, environment: str, service: str
    ) -> Reply | None:
        """None if the person may lock or unlock this service; else the reply saying why."""
        config = self._environment(environment)
        if config is None:
            return self._unknown_environment(environment)
        if service not in config.services:
            return Reply(f"{environment} has no service `{esc(service)}`.")
        verdict = self._verdict(slash, config, command)
        if not verdict:
            return Reply(f"Not done: {esc(verdict.reason)}.")
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
    problems = "\n".join(f"• {esc(problem)}" for problem in invalid.problems)
    return Reply(f"That release cannot go:\n{problems}")


def _submitted(
    release_id: str,
    slash: SlashCommand,
    command: Deploy,
    environment: EnvironmentConfig,
    followed: bool,
) -> str:
    items = command.components
    targets = ", ".join(target_text(c.service, c.version, c.flag, c.enabled) for c in items)
    text = f"{release_id} submitted by {slash.actor}: {targets} to {command.environment}"
    text += f" because {esc(command.reason)}." if command.reason else "."
    if environment.approval.required:
        other = " from someone else" if environment.approval.separate_approver else ""
        text += f" It waits for an approval{other}: `approve {release_id}`."
    if followed:
        return text + " Progress follows here."
    return text + f" Follow it with `drover watch {release_id}`."


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
    return f"{held.environment}/{held.service}{until}: {esc(held.reason)}"


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
