"""One line of text per message, for a person reading a release's timeline."""

from __future__ import annotations

from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    ApprovalRequested,
    ApproveRelease,
    ComponentFailed,
    ComponentHeld,
    ComponentRollbackFailed,
    ComponentStarted,
    ComponentWaiting,
    DeadlinePassed,
    DeployComponent,
    Envelope,
    FlagToggled,
    FlagToggleFailed,
    GateJudged,
    HostDrained,
    Message,
    PauseRelease,
    RejectRelease,
    ReleaseAccepted,
    ReleaseApproved,
    ReleaseFailed,
    ReleasePaused,
    ReleaseQueued,
    ReleaseRejected,
    ReleaseRetried,
    ReleaseRolledBack,
    ResumeRelease,
    RetryRelease,
    RollbackComponent,
    StepFailed,
    StepStarted,
    StepSucceeded,
    SubmitRelease,
    ToggleFlag,
)

__all__ = ["describe"]


def describe(message: Envelope) -> str:
    """One line for a person reading a release's progress."""
    at = message.occurred_at.strftime("%H:%M:%S.%f")[:-3]
    return f"{at}  {message.type:<24} {_details(message)}".rstrip()


def _details(message: Envelope) -> str:
    p = message.payload
    for part in (_release, _people, _worker, _checks):
        text = part(p, message.actor)
        if text is not None:
            return text
    service = getattr(p, "service", "")
    version = getattr(p, "version", "")
    return f"{service}@{version}" if version else service


def _release(p: Message, actor: str) -> str | None:
    match p:
        case SubmitRelease():
            return f"{p.environment}: " + ", ".join(
                f"{c.service}@{c.version}"
                if c.flag is None
                else f"{c.name} {'on' if c.enabled else 'off'}"
                for c in p.components
            )
        case ReleaseAccepted():
            return f"{p.environment}, {len(p.components)} components, by {actor}"
        case ReleaseRejected():
            return "; ".join(str(problem) for problem in p.problems)
        case ReleaseQueued():
            return f"waiting for {', '.join(p.behind)}"
        case ReleaseRolledBack():
            return f"because {p.reason}"
        case ReleaseFailed():
            return f"{p.reason}; needs attention: {'; '.join(p.needs_attention)}"
        case DeadlinePassed():
            return f"{p.service}: no word by {p.deadline:%H:%M:%S} ({p.waited_for})"
    return None


def _people(p: Message, actor: str) -> str | None:
    match p:
        case AbortRelease() | RejectRelease() | PauseRelease() | RetryRelease():
            return f"by {actor}" + (f": {p.reason}" if p.reason else "")
        case ApproveRelease() | ResumeRelease():
            return f"by {actor}"
        case ApprovalRequested():
            return f"{p.component or 'the release'}: {p.reason}"
        case ReleaseApproved():
            return ", ".join(p.approved) + (f": {p.comment}" if p.comment else "")
        case ApprovalRefused():
            return f"{p.command} refused: {p.reason}"
        case ReleasePaused():
            return p.reason
        case ReleaseRetried():
            return f"attempt {p.attempt}: {', '.join(p.components)}"
    return None


def _worker(p: Message, actor: str) -> str | None:
    match p:
        case DeployComponent():
            return f"{p.service} -> {p.version}"
        case RollbackComponent():
            targets = sorted(set(p.to_versions.values()))
            return f"{p.service} {p.from_version} -> {', '.join(targets) or 'nothing recorded'}"
        case ComponentStarted():
            previous = ", ".join(sorted(set(p.previous_versions.values())))
            return f"{p.service} {previous} -> {p.version}"
        case StepStarted() | StepSucceeded() | StepFailed():
            return _step(p)
        case ComponentFailed():
            restored = "hosts put back" if p.restored else "HOSTS NOT PUT BACK"
            return f"{p.service}@{p.version}: {p.reason} ({restored})"
        case ComponentRollbackFailed():
            return f"{p.service}: {p.reason}; hosts left: {', '.join(p.hosts)}"
        case ComponentWaiting():
            return f"{p.service}: waiting for {p.holder} to finish"
        case ComponentHeld():
            return f"{p.service}: waits for a person ({p.reason})"
    return None


def _checks(p: Message, actor: str) -> str | None:
    match p:
        case HostDrained():
            left = f", {p.in_flight_left} still in flight (timed out)" if p.timed_out else ""
            return f"{p.service} {p.host} drained in {p.waited_ms:.0f} ms{left}"
        case GateJudged():
            return f"{p.service} {p.step} {p.gate}: {p.verdict} ({p.reason})"
        case ToggleFlag():
            undo = " (undo)" if p.undo else ""
            return f"{p.service}.{p.flag} -> {'on' if p.enabled else 'off'}{undo}"
        case FlagToggled():
            return f"{p.service}.{p.flag} is {'on' if p.enabled else 'off'}"
        case FlagToggleFailed():
            return f"{p.service}.{p.flag}: {p.reason}"
    return None


def _step(p: StepStarted | StepSucceeded | StepFailed) -> str:
    phase = "rollback " if p.rollback else ""
    where = f" batch {p.batch} [{', '.join(p.hosts)}]" if p.hosts else ""
    text = f"{p.service} {phase}{p.step}{where}"
    if isinstance(p, StepSucceeded):
        return f"{text} {p.duration_ms:.0f} ms"
    if isinstance(p, StepFailed):
        return f"{text} FAILED{' on ' + p.host if p.host else ''}: {p.reason}"
    return text
