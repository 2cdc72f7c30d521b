"""Configuration, read from the environment once, at the edge of each process."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

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
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "amqp://", "amqps://", "memory://")):
            raise ValueError("expected redis://…, amqp://… or memory://")
        return url

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "sqlite:///")):
            raise ValueError("expected redis://… or sqlite:///path")
        return url

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")
