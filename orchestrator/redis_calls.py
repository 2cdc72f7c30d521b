# redis-py's connections are not annotated (as for orchestrator.redis_transport).
# mypy: disallow-untyped-calls=False
"""Redis calls past redis-py's client, on connections kept in a stack, packed in C.

Drover's hot calls to Redis are the store's scripts (a dozen for a one-host component in
the worker) and the broker's own: a message pushed, taken, acknowledged. Through
redis-py's client each call costs about 240,000 machine instructions of Python around a
round trip that costs a tenth of that: a connection taken from the pool and given back
(locks, a check of the process id, observability hooks), a retry wrapper, and every
argument encoded in Python. That was a fifth of all the worker did for a component
(``python -m bench instructions``). Here a call is packed by hiredis in C and sent on a
connection taken from a stack of its own: about 35,000.

What is kept of redis-py is what matters: its connections, made by the pool given
(password, TLS, database, timeouts), each checked before use as the pool checks what it
hands out, and the connection's retry policy, applied as redis-py's client applies it (a
connection that fails is dropped; the pool's policy says whether the call is sent again).
A Redis that has forgotten a script (restarted without it, or flushed) is sent the
script whole, as redis-py's ``Script`` would load it again. Replies are Redis's own, as
hiredis reads them (bytes, integers, lists): no response callbacks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError

__all__ = ["Argument", "KeptConnections", "Lua"]

Argument = str | bytes | int | float


@dataclass(frozen=True)
class Lua:
    """A Lua script, and the SHA-1 by which Redis keeps it once it has been sent."""

    script: str
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.script.encode()).hexdigest())


class KeptConnections:
    """Calls on connections of ``pool``, kept in a stack.

    A connection is taken by one call at a time and put back after; as many exist as
    calls have run at once. They are closed with the pool (which counts them as in use).
    Not for use across a fork (Drover's processes run their work in threads).
    """

    def __init__(self, pool: redis.ConnectionPool):
        self.pool = pool
        self._idle: list[Connection] = []

    def script(self, script: Lua, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        """``script``'s answer, run on ``keys`` and ``args``."""
        return self._call(lambda connection: _run(connection, script, keys, args))

    def command(self, *command: Argument) -> Any:
        """The answer to one ``command`` (its name, then its arguments)."""
        return self._call(lambda connection: _send(connection, _packed(*command)))

    def _call(self, send: Callable[[Connection], Any]) -> Any:
        connection = self._take()
        try:
            return connection.retry.call_with_retry(
                lambda: send(connection), lambda _error: connection.disconnect()
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
            return self.pool.get_connection()
        # As the pool checks what it hands out: a connection the server closed while it
        # was idle (a restart) is made again, rather than failing the call sent on it.
        self.pool.ensure_connection(connection)
        return connection


def _run(connection: Connection, script: Lua, keys: Sequence[str], args: Sequence[Argument]) -> Any:
    try:
        return _send(connection, _packed("EVALSHA", script.sha, len(keys), *keys, *args))
    except NoScriptError:
        return _send(connection, _packed("EVAL", script.script, len(keys), *keys, *args))


def _send(connection: Connection, packed: bytes) -> Any:
    connection.send_packed_command([packed], check_health=False)
    return connection.read_response()


def _packed(*command: Argument) -> bytes:
    # hiredis's stub gives its argument as a one-element tuple; any length is taken.
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed
