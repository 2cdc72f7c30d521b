# redis-py's connections are not annotated (as for orchestrator.redis_transport).
# mypy: disallow-untyped-calls=False
"""The store's Lua scripts, sent on connections the store keeps, past redis-py's client.

A one-host component costs the worker a dozen store calls, most of them scripts. Through
redis-py's client each call costs about 240,000 machine instructions of Python around a
round trip that costs a tenth of that: a connection taken from the pool and given back
(locks, a check of the process id, observability hooks), a retry wrapper, and every
argument encoded in Python. That was a fifth of all the worker did for a component
(``python -m bench instructions``). Here a call is packed by hiredis in C and sent on a
connection taken from a stack the store keeps: about 35,000.

What is kept of redis-py is what matters: its connections, made by the client's pool from
the store's URL (password, TLS, database, timeouts), each checked before use as the pool
checks what it hands out, and the connection's retry policy, applied as redis-py's client
applies it (a connection that fails is dropped; the URL's policy says whether the call is
sent again). A Redis that has forgotten a script (restarted without it, or flushed) is
sent the script whole, as redis-py's ``Script`` would load it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

__all__ = ["ScriptRunner"]

Argument = str | bytes | int | float


class ScriptRunner:
    """Runs scripts registered on ``client`` on connections of its pool, kept in a stack.

    A connection is taken by one call at a time and put back after; as many exist as
    calls have run at once. They are closed with the client's pool. Not for use across a
    fork (Drover's processes run their work in threads).
    """

    def __init__(self, client: redis.Redis):
        self._pool = client.connection_pool
        self._idle: list[Connection] = []

    def __call__(self, script: Script, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        connection = self._take()
        try:
            return connection.retry.call_with_retry(
                lambda: self._run(connection, script, keys, args),
                lambda _error: connection.disconnect(),
            )
        finally:
            # redis-py's connection drops itself on anything that may leave a reply
            # unread on the line (a timeout, an interrupt) and is made again when next
            # used; an error reply is read whole. Either way it is fit to go back.
            self._idle.append(connection)

    def _take(self) -> Connection:
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._pool.get_connection()
        # As the pool checks what it hands out: a connection the server closed while it
        # was idle (a restart) is made again, rather than failing the call sent on it.
        self._pool.ensure_connection(connection)
        return connection

    @staticmethod
    def _run(
        connection: Connection,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Argument],
    ) -> Any:
        connection.send_packed_command(
            [_packed("EVALSHA", script.sha, len(keys), *keys, *args)], check_health=False
        )
        try:
            return connection.read_response()
        except NoScriptError:
            whole = _packed("EVAL", script.script, len(keys), *keys, *args)
            connection.send_packed_command([whole], check_health=False)
            return connection.read_response()


def _packed(*command: Argument | memoryview) -> bytes:
    # hiredis's stub gives its argument as a one-element tuple; any length is taken.
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed
