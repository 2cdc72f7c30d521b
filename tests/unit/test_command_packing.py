"""Drover's Redis transport packs commands in C: the bytes on the wire must be those
redis-py would have sent, and what hiredis cannot pack is left to redis-py."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from orchestrator.redis_transport import command_packed

_AS_REDIS_PY = redis.Connection()


@pytest.mark.parametrize(
    "command",
    [
        ("BRPOP", *(f"ns.svc.svc-{i:05d}" for i in range(1000)), 1),
        ("LPUSH", "ns.coordinator", '{"body": "eyJpZCI6...", "headers": {}}'),
        ("ZADD", "unacked_index", 1796564452.371963, "a0a410b0-0636-487f"),
        ("EVALSHA", "dad675bf", 2, "k1", "k2", b"\x00\xff bytes", -3, 0.1, 1e20),
        ("SET", "ключ", "значение é"),
    ],
    ids=["brpop of 1,000 queues", "lpush", "zadd with a time", "mixed types", "unicode"],
)
def test_a_command_is_packed_as_redis_py_packs_it(command: tuple[Any, ...]) -> None:
    assert command_packed(command) == b"".join(_AS_REDIS_PY.pack_command(*command))


@pytest.mark.parametrize(
    "command",
    [("CLIENT SETNAME", "drover"), ("SET", "k", True), ("SET", "k", None), ()],
    ids=["a two-word command", "a boolean", "nothing", "no command"],
)
def test_what_hiredis_cannot_pack_is_left_to_redis_py(command: tuple[Any, ...]) -> None:
    assert command_packed(command) is None
