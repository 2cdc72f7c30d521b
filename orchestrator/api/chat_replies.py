"""What Slack sends to ``POST /chatops/slack`` and what it gets back.

A :class:`SlashCommand` is Slack's form once it is read; a :class:`Reply` is what the person
(ephemeral) or the channel (in_channel) is told, as the route's answer or a post to the
command's ``response_url``. The text helpers here are the ones the commands and the
following of a release share: whatever came from a person, a worker or the store is made
inert (:func:`esc`) before Slack reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Reply", "SlashCommand", "code_block", "esc", "postable", "target_text"]


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


def postable(url: str) -> bool:
    """Is this a ``response_url`` Drover may post to: http(s), with a host, not huge?"""
    parts = urlsplit(url)
    return len(url) <= 2000 and parts.scheme in ("http", "https") and bool(parts.hostname)


def esc(text: object) -> str:
    """Text from a person, a worker or the store, made inert: Slack reads ``<…>`` as a
    mention or a link, and ``&`` starts an entity."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code_block(lines: Sequence[str]) -> str:
    return "```\n" + esc("\n".join(lines)) + "\n```"


def target_text(service: str, version: str | None, flag: str | None, enabled: bool) -> str:
    """One component of a release, as people write it: ``api@2.4.0`` or ``flag api.x on``."""
    if flag is not None:
        return f"flag {service}.{flag} {'on' if enabled else 'off'}"
    return f"{service}@{version}"
