"""A Redis that would lose saga state is named at start-up, with the setting to change."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.store.redis import RedisStore
from tests.conftest import require
from tests.support.redis_server import RedisServer


@contextmanager
def redis_server(folder: Path, *settings: str) -> Iterator[str]:
    require("Redis", "127.0.0.1", 6379)  # the machine's Redis says redis-server is here
    server = RedisServer(folder, settings)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.mark.broker
def test_a_redis_that_evicts_and_forgets_is_named(tmp_path: Path) -> None:
    with redis_server(
        tmp_path, "--appendonly", "no", "--maxmemory-policy", "allkeys-lru", "--save", ""
    ) as url:
        store = RedisStore(url)
        problems = store.durability_problems()
        store.close()
    assert any("maxmemory-policy is 'allkeys-lru'" in p and "noeviction" in p for p in problems)
    assert any("appendonly is off" in p for p in problems)


@pytest.mark.broker
def test_a_redis_set_up_to_keep_saga_state_raises_nothing(tmp_path: Path) -> None:
    with redis_server(
        tmp_path, "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", ""
    ) as url:
        store = RedisStore(url)
        assert store.durability_problems() == []
        store.close()
