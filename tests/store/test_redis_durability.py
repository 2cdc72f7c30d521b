"""A Redis that would lose saga state is named at start-up, with the setting to change."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from orchestrator.store.redis import RedisStore
from tests.conftest import require


@contextmanager
def redis_server(folder: Path, *settings: str) -> Iterator[str]:
    require("Redis", "127.0.0.1", 6379)  # the machine's Redis says redis-server is here
    server = shutil.which("redis-server")
    assert server
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), *settings],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


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
