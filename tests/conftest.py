"""Fixtures shared by every test: the real brokers, and a namespace per test.

A test that needs Redis or RabbitMQ skips on a laptop without them, and fails in CI
(``CI=true``), where ``.ci/run`` starts them: a broker test must never pass by skipping.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    if _answers(host, port):
        return
    message = f"{service} is not answering on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must start it (.ci/run)")
    pytest.skip(message)


@pytest.fixture
def namespace() -> str:
    """A prefix for every queue, exchange and store key a test makes, so tests never meet."""
    return f"drovertest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_url(namespace: str) -> Iterator[str]:
    require("Redis", "127.0.0.1", 6379)
    yield REDIS_URL
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def amqp_url() -> str:
    require("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL
