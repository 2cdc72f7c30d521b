"""The words of a slash command, parsed into a typed command or a reply that helps.

Whatever a person types, ``parse`` returns a command or raises ``ChatError`` whose reply
says what is wrong and shows the right form: never a traceback. Keywords are read in any
case; names and versions are held to the same strict patterns as everywhere else in
Drover (``orchestrator.vocabulary``), so nothing typed in chat reaches a queue name, a
store key or a shell command unchecked.

Replies are Slack text, where ``<...>`` is a mention or a link: forms name their parts
in capitals (``deploy SERVICE@VERSION``), and text typed by a person is echoed back only
through ``_shown``, shortened and with ``<``, ``>`` and ``&`` escaped, so that a reply
cannot mention ``<!channel>`` or link anywhere.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pydantic import TypeAdapter, ValidationError

from orchestrator.contract.base import ComponentName
from orchestrator.contract.commands import (
    AbortRelease,
    ApproveRelease,
    ComponentRequest,
    PauseRelease,
    RejectRelease,
    ResumeRelease,
    RetryRelease,
    SubmitRelease,
)
from orchestrator.vocabulary import Name, Version

__all__ = [
    "HELP",
    "MAX_REASON",
    "MAX_TEXT",
    "ChatError",
    "Command",
    "Component",
    "Decide",
    "DecisionKind",
    "Deploy",
    "Help",
    "Lock",
    "Queues",
    "Status",
    "Unlock",
    "Where",
    "parse",
]

MAX_TEXT: Final = 2000  # characters of a whole command: longer is not a command
MAX_REASON: Final = 500  # as the contract's reasons
_MAX_SHOWN: Final = 40  # characters of a person's text echoed in a reply
_MAX_LOCK_S: Final = 30 * 86_400  # a lock longer than a month is a mistake, not a plan

# As the envelope's release ids (``orchestrator.contract.envelope``).
_RELEASE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DURATION: Final = re.compile(r"^([0-9]{1,7})([smhd])$", re.IGNORECASE)
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_UNIT_WORD: Final = re.compile(r"^(s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)$")

_NAMES: Final = TypeAdapter(Name)
_VERSIONS: Final = TypeAdapter(Version)
_COMPONENT_NAMES: Final = TypeAdapter(ComponentName)

_NAME_RULE: Final = "lowercase letters, digits, - and _, up to 63, starting with a letter or digit"
_VERSION_RULE: Final = "letters, digits, . _ + and -, up to 64, starting with a letter or digit"


class ChatError(Exception):
    """A command that cannot be carried out as typed; ``reply`` tells the person why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


# --- What a command becomes ---------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One item of a deploy: a service to a version, or one of its flags on or off."""

    service: str
    version: str | None = None
    flag: str | None = None
    enabled: bool = True  # for a flag: what to turn it to

    @property
    def name(self) -> str:
        return self.service if self.flag is None else f"{self.service}.{self.flag}"


@dataclass(frozen=True)
class Deploy:
    """``deploy`` (or, with ``dry_run``, ``plan``) these components to one environment."""

    environment: str
    components: tuple[Component, ...]
    reason: str = ""
    dry_run: bool = False

    @property
    def services(self) -> tuple[str, ...]:
        """Each service the command touches, once, in the order given."""
        return tuple(dict.fromkeys(c.service for c in self.components))

    def release(self) -> SubmitRelease:
        """The release this command asks for.

        A flag flip waits for a deploy of its own service in the same command: typed
        together, they mean "ship it dark, then turn it on", as in the release files.
        """
        deployed = {c.service for c in self.components if c.flag is None}
        requests = tuple(
            ComponentRequest(
                service=c.service,
                version=c.version,
                flag=c.flag,
                enabled=c.enabled,
                depends_on=(c.service,) if c.flag is not None and c.service in deployed else (),
            )
            for c in self.components
        )
        return SubmitRelease(environment=self.environment, reason=self.reason, components=requests)


DecisionKind: TypeAlias = Literal["approve", "reject", "abort", "pause", "resume", "retry"]
_DecisionCommand: TypeAlias = (
    ApproveRelease | RejectRelease | AbortRelease | PauseRelease | ResumeRelease | RetryRelease
)


@dataclass(frozen=True)
class Decide:
    """A person's word on a release in flight."""

    kind: DecisionKind
    release_id: str
    reason: str = ""  # for approve, the comment
    component: str | None = None  # approve only: just this one

    def command(self) -> _DecisionCommand:
        """The payload of the contract command this decision publishes."""
        match self.kind:
            case "approve":
                return ApproveRelease(component=self.component, comment=self.reason)
            case "reject":
                return RejectRelease(reason=self.reason)
            case "abort":
                return AbortRelease(reason=self.reason)
            case "pause":
                return PauseRelease(reason=self.reason)
            case "resume":
                return ResumeRelease()
            case "retry":
                return RetryRelease(reason=self.reason)


@dataclass(frozen=True)
class Status:
    """Releases in flight, or just one."""

    release_id: str | None = None


@dataclass(frozen=True)
class Queues:
    """Drover's queues."""


@dataclass(frozen=True)
class Where:
    """The version of a service in each environment."""

    service: str


@dataclass(frozen=True)
class Lock:
    """Keep releases off one service of one environment, for a while or until unlocked."""

    environment: str
    service: str
    reason: str
    for_s: int | None = None  # None: until unlocked


@dataclass(frozen=True)
class Unlock:
    environment: str
    service: str
    force: bool = False  # lift a lock someone else took


@dataclass(frozen=True)
class Help:
    pass


Command: TypeAlias = Deploy | Decide | Status | Queues | Where | Lock | Unlock | Help


# --- The commands, for help and for replies that show the right form --------------------


@dataclass(frozen=True)
class _Usage:
    form: str
    example: str
    meaning: str


_USAGE: Final[dict[str, _Usage]] = {
    "deploy": _Usage(
        "deploy SERVICE@VERSION … to ENVIRONMENT [because REASON]",
        "deploy payments@2.4.0 checkout@1.9.0 to prod because new fee model",
        "release these versions, in the order given; an item"
        " `flag SERVICE.FLAG on|off` turns a feature flag",
    ),
    "plan": _Usage(
        "plan SERVICE@VERSION … to ENVIRONMENT [because REASON]",
        "plan payments@2.4.0 flag checkout.one-click on to prod",
        "what that deploy would do, without doing anything",
    ),
    "approve": _Usage(
        "approve RELEASE [component NAME] [because COMMENT]",
        "approve R-42 component api",
        "let go on what waits for a person: the release, or one component",
    ),
    "reject": _Usage(
        "reject RELEASE [because REASON]",
        "reject R-42 because not during the sale",
        "say no to what waits for approval; what was done is put back",
    ),
    "abort": _Usage(
        "abort RELEASE [because REASON]",
        "abort R-42 because errors are up",
        "start nothing new and put back what was done",
    ),
    "pause": _Usage(
        "pause RELEASE [because REASON]",
        "pause R-42 because watching the dashboards",
        "start nothing new until the release is resumed",
    ),
    "resume": _Usage("resume RELEASE", "resume R-42", "carry on a paused release"),
    "retry": _Usage(
        "retry RELEASE [because REASON]",
        "retry R-42",
        "run a failed or rolled back release again, from where it stopped",
    ),
    "status": _Usage("status [RELEASE]", "status", "the releases in flight, or one release"),
    "queues": _Usage("queues", "queues", "Drover's queues: ready, unacked, consumers"),
    "where": _Usage("where SERVICE", "where payments", "the version of a service everywhere"),
    "lock": _Usage(
        "lock ENVIRONMENT/SERVICE REASON [for DURATION]",
        "lock prod/payments database migration for 2h",
        "no release deploys the service there until it is unlocked, or for"
        " a while (90s, 30m, 2h, 1d)",
    ),
    "unlock": _Usage(
        "unlock ENVIRONMENT/SERVICE [force]",
        "unlock prod/payments",
        "lift a lock; `force` lifts one someone else took",
    ),
    "help": _Usage("help", "help", "this list"),
}

HELP: Final = "Drover commands:\n" + "\n".join(
    f"• `{usage.form}`: {usage.meaning}. E.g. `{usage.example}`" for usage in _USAGE.values()
)


def _form(verb: str) -> str:
    usage = _USAGE[verb]
    return f"The form is `{usage.form}`, e.g. `{usage.example}`."


def _shown(text: str) -> str:
    """A person's text, safe to put in a reply: short, one line, no mentions or links."""
    short = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"
    printable = "".join(ch if ch.isprintable() else "?" for ch in short)
    escaped = printable.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`" + escaped.replace("`", "'") + "`"


# --- Reading the words --------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    text: str
    start: int  # where it starts in the command, to take the rest verbatim

    @property
    def keyword(self) -> str:
        return self.text.lower()


class _Words:
    """The command's words, read from left to right."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._words = [_Word(m.group(), m.start()) for m in re.finditer(r"\S+", text)]
        self._at = 0

    def done(self) -> bool:
        return self._at >= len(self._words)

    def peek(self) -> str:
        """The next word's keyword form (lowercase), or "" at the end."""
        return "" if self.done() else self._words[self._at].keyword

    def take(self) -> str:
        word = self._words[self._at]
        self._at += 1
        return word.text

    def rest(self) -> list[_Word]:
        """Every word left; the reader is then at the end."""
        rest, self._at = self._words[self._at :], len(self._words)
        return rest

    def between(self, first: _Word, end: _Word | None) -> str:
        """The text from ``first`` up to ``end`` (or the end), spacing and all."""
        return self._text[first.start : end.start if end else None].strip()


def parse(text: str) -> Command:
    """The command in a slash command's text; ``ChatError`` with a reply if there is none."""
    if len(text) > MAX_TEXT:
        raise ChatError(
            f"That is {len(text)} characters long; a command has at most {MAX_TEXT}. Try `help`."
        )
    words = _Words(text)
    if words.done():
        return Help()
    verb = words.take().lower()
    read = _READERS.get(verb)
    if read is None:
        raise ChatError(_unknown(verb))
    return read(words)


def _unknown(verb: str) -> str:
    reply = f"I don't know the command {_shown(verb)}."
    close = difflib.get_close_matches(verb, list(_USAGE), n=1, cutoff=0.6)
    if close:
        reply += f" Did you mean `{close[0]}`?"
    return reply + " `help` lists every command."


# --- deploy and plan ----------------------------------------------------------------------


def _deploy(words: _Words, *, dry_run: bool) -> Deploy:
    verb = "plan" if dry_run else "deploy"
    components = _components(words, verb)
    environment = _environment(words, verb)
    reason = _because(words, verb)
    return Deploy(environment, components, reason, dry_run)


def _components(words: _Words, verb: str) -> tuple[Component, ...]:
    components: list[Component] = []
    while not words.done() and words.peek() != "to":
        if words.peek() == ",":  # "a@1 , b@2": people list things with commas
            words.take()
            continue
        components.append(_component(words, verb))
    if not components:
        raise ChatError(f"`{verb}` needs at least one `SERVICE@VERSION`. {_form(verb)}")
    names = [c.name for c in components]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ChatError(f"{', '.join(map(_shown, twice))} is listed more than once.")
    return tuple(components)


def _component(words: _Words, verb: str) -> Component:
    word = words.take().rstrip(",")
    keyword = word.lower()
    if keyword == "flag":
        return _flag(words)
    if keyword == "after":
        raise ChatError(
            "`after` is not supported in chat: components go in the order given. For"
            " dependencies between them, write a release file (`drover release submit`)."
        )
    if keyword == "because":
        raise ChatError(f"`to ENVIRONMENT` comes before `because`. {_form(verb)}")
    service, at, version = word.partition("@")
    if not at and _valid(_NAMES, service):
        raise ChatError(
            f"{_shown(word)} needs a version, as in `{service}@2.4.0`; if it is the"
            f" environment, write `to {service}`. {_form(verb)}"
        )
    if not at:
        raise ChatError(f"{_shown(word)} is not `SERVICE@VERSION`. {_form(verb)}")
    return Component(_service(service), version=_version(version))


def _flag(words: _Words) -> Component:
    form = "A flag flip is `flag SERVICE.FLAG on` (or `off`): `flag checkout.one-click on`."
    if words.done() or words.peek() == "to":
        raise ChatError(f"`flag` needs a `SERVICE.FLAG`. {form}")
    target = words.take()
    service, dot, flag = target.partition(".")
    if not dot:
        raise ChatError(f"{_shown(target)} is not `SERVICE.FLAG`. {form}")
    state = words.peek().rstrip(",")
    if state not in ("on", "off"):
        raise ChatError(f"Say whether to turn {_shown(target)} `on` or `off`. {form}")
    words.take()
    return Component(_service(service), flag=_flag_name(flag), enabled=state == "on")


def _environment(words: _Words, verb: str) -> str:
    if words.peek() != "to":
        raise ChatError(f"`{verb}` needs `to ENVIRONMENT`. {_form(verb)}")
    words.take()
    if words.done():
        raise ChatError(f"`to` needs an environment, e.g. `to prod`. {_form(verb)}")
    return _name(words.take(), "an environment")


# --- approve, reject, abort, pause, resume, retry -----------------------------------------


def _decide(kind: DecisionKind) -> Callable[[_Words], Decide]:
    def read(words: _Words) -> Decide:
        release_id = _release_id(words, kind)
        component = _approved_component(words) if kind == "approve" else None
        reason = "" if kind == "resume" else _because(words, kind)
        _nothing_more(words, kind)
        return Decide(kind, release_id, reason, component)

    return read


def _release_id(words: _Words, verb: str) -> str:
    if words.done():
        raise ChatError(f"`{verb}` needs a release id. {_form(verb)}")
    word = words.take()
    if not _RELEASE_ID.match(word):
        raise ChatError(
            f"{_shown(word)} is not a release id (letters, digits, . _ and -, up to 100)."
            f" {_form(verb)}"
        )
    return word


def _approved_component(words: _Words) -> str | None:
    if words.peek() != "component":
        return None
    words.take()
    if words.done():
        raise ChatError(f"`component` needs a name, e.g. `component api`. {_form('approve')}")
    word = words.take()
    if not _valid(_COMPONENT_NAMES, word):
        raise ChatError(
            f"{_shown(word)} is not a component: a service, or `SERVICE.FLAG` for a"
            f" flag flip ({_NAME_RULE})."
        )
    return word


# --- status, queues, where, help ----------------------------------------------------------


def _status(words: _Words) -> Status:
    release_id = None if words.done() else _release_id(words, "status")
    _nothing_more(words, "status")
    return Status(release_id)


def _queues(words: _Words) -> Queues:
    _nothing_more(words, "queues")
    return Queues()


def _where(words: _Words) -> Where:
    if words.done():
        raise ChatError(f"`where` needs a service. {_form('where')}")
    service = _service(words.take())
    _nothing_more(words, "where")
    return Where(service)


def _help(words: _Words) -> Help:
    words.rest()  # `help deploy` is still a request for help
    return Help()


# --- lock and unlock ----------------------------------------------------------------------


def _lock(words: _Words) -> Lock:
    environment, service = _target(words, "lock")
    rest = words.rest()
    for_s, reason_end = _lock_duration(rest)
    reason_words = rest[: len(rest) - 2] if for_s is not None else rest
    if reason_words and reason_words[0].keyword == "because":
        reason_words = reason_words[1:]  # `lock prod/payments because …` reads naturally too
    if not reason_words:
        raise ChatError(f"`lock` needs a reason, so others know why. {_form('lock')}")
    reason = _reason(words.between(reason_words[0], reason_end))
    return Lock(environment, service, reason, for_s)


def _lock_duration(rest: list[_Word]) -> tuple[int | None, _Word | None]:
    """How long a lock lasts (None: until unlocked), and the word where its reason ends."""
    if len(rest) >= 3 and rest[-3].keyword == "for" and _spelt_out(rest[-2], rest[-1]):
        raise ChatError(
            f"Write the duration as one word: `for {rest[-2].text}{rest[-1].keyword[:1]}`"
            " (90s, 30m, 2h, 1d)."
        )
    if len(rest) < 2 or rest[-2].keyword != "for" or not rest[-1].text[:1].isdigit():
        return None, None  # "waiting for QA": a reason, not a duration
    return _duration(rest[-1].text), rest[-2]


def _spelt_out(number: _Word, unit: _Word) -> bool:
    """Is this "2 hours", a duration in two words?"""
    return number.text.isdigit() and _UNIT_WORD.match(unit.keyword) is not None


def _duration(word: str) -> int:
    match = _DURATION.match(word)
    if not match:
        raise ChatError(f"{_shown(word)} is not a duration: use 90s, 30m, 2h or 1d.")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2).lower()]
    if not 0 < seconds <= _MAX_LOCK_S:
        raise ChatError(f"A lock lasts from 1s to {_MAX_LOCK_S // 86_400}d, not {_shown(word)}.")
    return seconds


def _unlock(words: _Words) -> Unlock:
    environment, service = _target(words, "unlock")
    force = words.peek() == "force"
    if force:
        words.take()
    _nothing_more(words, "unlock")
    return Unlock(environment, service, force)


def _target(words: _Words, verb: str) -> tuple[str, str]:
    if words.done():
        raise ChatError(f"`{verb}` needs `ENVIRONMENT/SERVICE`. {_form(verb)}")
    word = words.take()
    environment, slash, service = word.partition("/")
    if not slash:
        raise ChatError(
            f"Name what to {verb} as `ENVIRONMENT/SERVICE`, not {_shown(word)}. {_form(verb)}"
        )
    return _name(environment, "an environment"), _service(service)


# --- Pieces every command shares ----------------------------------------------------------


def _because(words: _Words, verb: str) -> str:
    """An optional ``because REASON``, which takes the rest of the command verbatim."""
    if words.done():
        return ""
    if words.peek() != "because":
        raise ChatError(
            f"I expected `because REASON` or nothing, not {_shown(words.take())}. {_form(verb)}"
        )
    words.take()
    rest = words.rest()
    if not rest:
        raise ChatError(f"`because` needs a reason. {_form(verb)}")
    return _reason(words.between(rest[0], None))


def _reason(reason: str) -> str:
    if len(reason) > MAX_REASON:
        raise ChatError(f"The reason is {len(reason)} characters long; at most {MAX_REASON}.")
    return reason


def _nothing_more(words: _Words, verb: str) -> None:
    if not words.done():
        raise ChatError(f"I did not expect {_shown(words.take())} there. {_form(verb)}")


def _service(word: str) -> str:
    return _name(word, "a service")


def _flag_name(word: str) -> str:
    return _name(word, "a flag")


def _name(word: str, what: str) -> str:
    if not _valid(_NAMES, word):
        raise ChatError(f"{_shown(word)} is not {what} name ({_NAME_RULE}).")
    return word


def _version(word: str) -> str:
    if not _valid(_VERSIONS, word):
        shown = _shown(word) if word else "An empty version after `@`"
        raise ChatError(f"{shown} is not a version ({_VERSION_RULE}).")
    return word


def _valid(adapter: TypeAdapter[str], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


_READERS: Final[dict[str, Callable[[_Words], Command]]] = {
    "deploy": lambda words: _deploy(words, dry_run=False),
    "plan": lambda words: _deploy(words, dry_run=True),
    "approve": _decide("approve"),
    "reject": _decide("reject"),
    "abort": _decide("abort"),
    "pause": _decide("pause"),
    "resume": _decide("resume"),
    "retry": _decide("retry"),
    "status": _status,
    "queues": _queues,
    "where": _where,
    "lock": _lock,
    "unlock": _unlock,
    "help": _help,
}
