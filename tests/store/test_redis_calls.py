"""Redis calls past redis-py's client (the store's scripts, the broker's pushes, takes and
acknowledgements): every caller gets its own answer, through a Redis that forgot the
scripts, was restarted, or answered with an error or too late."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
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


# --- calls sent ahead: answers read later, in order, by the thread that sent them ----------

_PUSH = Lua("return redis.call('RPUSH', KEYS[1], ARGV[1])")
_REFUSE_BAD = Lua(
    "if ARGV[1] == 'bad' then return redis.error_reply('refused') end "
    "return redis.call('RPUSH', KEYS[1], ARGV[1])"
)


def _as_is(reply: object) -> object:
    return reply


def test_calls_sent_ahead_are_run_in_order_before_the_threads_next_call(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    first = calls.script_ahead(_PUSH, ["made"], ["first"], _as_is)
    second = calls.script_ahead(_PUSH, ["made"], ["second"], _as_is)

    # the next call, waited for, finds both done: on the same connection, after them
    assert calls.command("LRANGE", "made", 0, -1) == [b"first", b"second"]
    assert (first.done(), second.done()) == (True, True)
    assert (first.wait(), second.wait()) == (1, 2)


def test_waiting_for_a_call_sent_ahead_reads_its_answer_and_those_before_it(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    first = calls.script_ahead(_PUSH, ["made"], ["first"], _as_is)
    second = calls.script_ahead(_PUSH, ["made"], ["second"], _as_is)
    third = calls.script_ahead(_PUSH, ["made"], ["third"], _as_is)

    assert second.wait() == 2
    assert (first.done(), third.done()) == (True, False)
    assert calls.command("LLEN", "made") == 3
    assert third.wait() == 3


def test_a_failure_sent_ahead_is_raised_once_before_the_next_call_is_sent(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    calls.script_ahead(_REFUSE_BAD, ["made"], ["bad"], _as_is)
    after = calls.script_ahead(_REFUSE_BAD, ["made"], ["after"], _as_is)

    with pytest.raises(ResponseError, match="refused"):
        calls.command("RPUSH", "made", "next")  # learned here: this one is not sent
    # Those sent after it were run: only what they check themselves fences them.
    assert after.wait() == 1
    assert calls.command("LRANGE", "made", 0, -1) == [b"after"]  # learned once


def test_a_refusal_made_of_an_answer_is_the_callers_own(server: RedisServer) -> None:
    calls = KeptConnections(_client(server).connection_pool)

    def counted(reply: object) -> int:
        if reply == 2:
            raise LookupError("the second is refused")
        assert isinstance(reply, int)
        return reply

    assert calls.script_ahead(_PUSH, ["made"], ["first"], counted).wait() == 1
    refused = calls.script_ahead(_PUSH, ["made"], ["second"], counted)
    with pytest.raises(LookupError, match="second"):
        calls.command("LLEN", "made")
    with pytest.raises(LookupError, match="second"):
        refused.wait()  # and to whoever waits for it


def test_a_script_is_loaded_for_its_first_call_sent_ahead_and_again_after_a_restart(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    assert calls.script_ahead(_PUSH, ["made"], ["first"], _as_is).wait() == 1
    assert calls.command("LLEN", "made") == 1  # the connection given back

    server.kill()
    server.start()  # knowing no script: a connection made anew says so

    assert calls.script_ahead(_PUSH, ["made"], ["again"], _as_is).wait() == 2


def test_a_script_flushed_fails_the_call_sent_ahead_once_and_is_loaded_for_the_next(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    assert calls.script_ahead(_PUSH, ["made"], ["known"], _as_is).wait() == 1
    _client(server).script_flush()

    calls.script_ahead(_PUSH, ["made"], ["forgotten"], _as_is)
    with pytest.raises(NoScriptError):
        calls.command("LLEN", "made")

    # not sent again behind the thread's back; sent again, it runs: the script is loaded
    assert calls.script_ahead(_PUSH, ["made"], ["again"], _as_is).wait() == 2
    assert calls.command("LRANGE", "made", 0, -1) == [b"known", b"again"]


def test_a_redis_gone_while_answers_are_owed_fails_them_and_is_reached_again(
    server: RedisServer,
) -> None:
    calls = KeptConnections(_client(server, retry=Retry(NoBackoff(), 0)).connection_pool)
    owed = calls.script_ahead(_PUSH, ["made"], ["first"], _as_is)
    server.kill()

    with pytest.raises(RedisConnectionError):
        calls.command("LLEN", "made")
    with pytest.raises(RedisConnectionError):
        owed.wait()

    server.start()
    assert calls.script_ahead(_PUSH, ["made"], ["after"], _as_is).wait() >= 1
    assert calls.command("LINDEX", "made", -1) == b"after"


def test_only_the_thread_that_sent_a_call_ahead_reads_its_answer(server: RedisServer) -> None:
    calls = KeptConnections(_client(server).connection_pool)
    owed = calls.script_ahead(_PUSH, ["made"], ["mine"], _as_is)

    with ThreadPoolExecutor(1) as other:
        with pytest.raises(RuntimeError, match="by the thread that sent it"):
            other.submit(owed.wait).result()
        # another thread's calls take a connection of their own
        assert other.submit(calls.command, "PING").result() == b"PONG"
    assert owed.wait() == 1
