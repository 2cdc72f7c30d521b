"""Redis calls past redis-py's client (the store's scripts, the broker's pushes, takes and
acknowledgements): every caller gets its own answer, through a Redis that forgot the
scripts, was restarted, or answered with an error or too late."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from orchestrator.redis_calls import KeptConnections, Lua
from orchestrator.store.redis import RedisStore
from tests.conftest import require
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.broker

_ECHO = "return ARGV[1]"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    require("Redis", "127.0.0.1", 6379)  # the machine's Redis says redis-server is here
    started = RedisServer(tmp_path)
    started.start()
    yield started
    started.kill()


def _client(server: RedisServer, **options: object) -> redis.Redis:
    return redis.Redis.from_url(server.url, **options)


def test_a_redis_that_forgot_the_scripts_is_sent_them_again(server: RedisServer) -> None:
    store = RedisStore(server.url, "t")
    assert store.count_attempt("m1") == 1
    _client(server).script_flush()

    assert store.count_attempt("m1") == 2  # the script sent whole, and it ran once
    assert store.count_attempt("m1") == 3
    store.close()


def test_a_restarted_redis_is_reached_again(server: RedisServer) -> None:
    store = RedisStore(server.url, "t")
    assert store.count_attempt("m1") == 1  # a connection made and kept

    server.kill()
    server.start()  # with what it persisted, and no scripts

    assert store.count_attempt("m1") == 2
    store.close()


def test_an_error_reply_leaves_the_next_call_its_own_answer(server: RedisServer) -> None:
    client = _client(server)
    runner = KeptConnections(client.connection_pool)
    failing = Lua("return redis.error_reply('no such thing')")
    echo = Lua(_ECHO)

    with pytest.raises(ResponseError, match="no such thing"):
        runner.script(failing, [], [])

    assert runner.script(echo, [], ["mine"]) == b"mine"
    assert _connections(client) == 1 + 1  # the runner's one, and the one counting


def test_a_reply_too_late_is_not_taken_by_the_next_call(server: RedisServer) -> None:
    client = _client(server, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    runner = KeptConnections(client.connection_pool)
    slow = Lua(
        "local t = redis.call('TIME') local until_us = t[1] * 1e6 + t[2] + 500000 "
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] > until_us return 'late'"
    )
    echo = Lua(_ECHO)

    with pytest.raises(RedisTimeout):
        runner.script(slow, [], [])
    time.sleep(0.6)  # the slow script's answer is sent, to whoever still listens

    assert runner.script(echo, [], ["mine"]) == b"mine"  # not the slow script's "late"


def test_threads_calling_at_once_each_get_their_own_answers(server: RedisServer) -> None:
    client = _client(server)
    runner = KeptConnections(client.connection_pool)
    echo = Lua(_ECHO)
    wrong: list[tuple[str, bytes]] = []
    start = threading.Barrier(8)

    def call_many(name: str) -> None:
        start.wait()
        for n in range(300):
            mine = f"{name}/{n}"
            answer = runner.script(echo, [], [mine])
            if answer != mine.encode():
                wrong.append((mine, answer))

    threads = [threading.Thread(target=call_many, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wrong == []
    assert _connections(client) <= 8 + 1  # one per call at a time, kept, and the counter's


def _connections(client: redis.Redis) -> int:
    return len(client.client_list())


def test_a_command_answers_as_redis_does(server: RedisServer) -> None:
    client = _client(server)
    calls = KeptConnections(client.connection_pool)

    assert calls.command("RPUSH", "waiting", "first", b"second") == 2
    assert calls.command("LRANGE", "waiting", 0, -1) == [b"first", b"second"]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        calls.command("HGET", "waiting", "field")
    assert calls.command("LLEN", "waiting") == 2  # the error read whole: this answer is its own
