"""What the bus's Redis tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, keeping nothing on disk."""
    require("Redis", "127.0.0.1", 6379)  # the machine's Redis says redis-server is here
    server = RedisServer(tmp_path, settings=("--save", "", "--appendonly", "no"))
    server.start()
    yield server
    server.kill()
