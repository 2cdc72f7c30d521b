"""What every benchmark is told: which broker, how many runs, where the services are."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Options"]


@dataclass(frozen=True)
class Options:
    broker: str  # "redis" or "rabbitmq"
    runs: int
    redis_url: str
    amqp_url: str

    @property
    def broker_url(self) -> str:
        return self.redis_url if self.broker == "redis" else self.amqp_url
