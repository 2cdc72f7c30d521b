"""Configuration, read from the environment once, at the edge of each process."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.drills import CrashPoints

__all__ = ["EMBEDDED_BROKER_URL", "Settings", "UnknownSetting", "redacted"]

EMBEDDED_BROKER_URL = "memory://localhost/"


class Settings(BaseSettings):
    """Every knob a Drover process has, each from a ``DROVER_*`` variable."""

    model_config = SettingsConfigDict(env_prefix="DROVER_", extra="forbid", frozen=True)

    broker_url: str = Field(
        default=EMBEDDED_BROKER_URL,
        description="redis://…, amqp://… or memory:// (in-process, one process only).",
    )
    store_url: str = Field(
        default="sqlite:///.drover/store.db",
        description="redis://… (shared) or sqlite:///path (one machine).",
    )
    fleet: Path | None = Field(default=None, description="Path of the fleet file.")
    namespace: str = Field(
        default="drover",
        pattern=r"^[a-z][a-z0-9-]{0,40}$",
        description="Prefix of every queue, exchange and store key: several Drovers, one broker.",
    )
    worker_concurrency: int = Field(
        default=4, ge=1, le=256, description="Components one worker process runs at once."
    )
    lease_ttl_s: float = Field(
        default=15.0,
        gt=0.5,
        le=3600,
        description="A worker's hold on a component; a dead worker's is taken over after it.",
    )
    delivery_limit: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Times a worker may start a command (taking its lease) before the "
        "command is dead-lettered and its component reported failed.",
    )
    redis_visibility_timeout_s: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="Redis broker: when a message a worker took but did not ack is handed out "
        "again (the lease keeps the copy from running beside a live original).",
    )
    progress_feed_every_s: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="How often a worker publishes its step reports on the live feed "
        "(ns.progress): one message per release with the reports made since.",
    )
    crash_at: str | None = Field(
        default=None,
        pattern=r"^[a-z_.@]+(:[0-9]+)?(,[a-z_.@]+(:[0-9]+)?)*$",
        description="Drills only: SIGKILL this process at these points (orchestrator/drills.py).",
    )
    drill_duplicate_publishes: bool = Field(
        default=False,
        description="Drills only: publish every message twice, to prove duplicates change nothing.",
    )
    drill_reorder_events_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Drills only: hold every event back a random time up to this, so events "
        "arrive out of order.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_tokens: Path | None = Field(
        default=None,
        description="drover api: the file of token hashes and what each may do "
        "(orchestrator/api/tokens.py); unset: every call is refused.",
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        description="drover api: Slack's signing secret for /chatops/slack; unset: the "
        "webhook refuses every request.",
    )
    statsd_host: str | None = Field(
        default=None, description="StatsD host (UDP) for Drover's metrics; unset: none are sent."
    )
    statsd_port: int = Field(default=8125, ge=1, le=65_535, description="StatsD UDP port.")
    statsd_prefix: str = Field(
        default="drover",
        pattern=r"^([a-z0-9_-]+(\.[a-z0-9_-]+)*)?$",
        description="First part of every metric name; empty for none.",
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "amqp://", "amqps://", "memory://")):
            raise ValueError("expected redis://…, amqp://… or memory://")
        return url

    @field_validator("crash_at")
    @classmethod
    def _known_crash_points(cls, spec: str | None) -> str | None:
        CrashPoints.parse(spec)
        return spec

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "sqlite:///")):
            raise ValueError("expected redis://… or sqlite:///path")
        return url

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Settings from ``DROVER_*`` variables; a variable Drover does not know is an error.

        A misspelt variable would otherwise be silently ignored and its default used,
        which for a broker or store URL means talking to the wrong place.
        """
        known = {f"DROVER_{name.upper()}" for name in cls.model_fields}
        unknown = sorted(k for k in environ if k.startswith("DROVER_") and k not in known)
        if unknown:
            raise UnknownSetting(unknown, sorted(known))
        return cls(**overrides)


class UnknownSetting(Exception):
    def __init__(self, unknown: list[str], known: list[str]):
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        super().__init__("unknown variables: " + ", ".join(hints))


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
