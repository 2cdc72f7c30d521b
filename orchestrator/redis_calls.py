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

A call may also be sent *ahead* (:meth:`KeptConnections.script_ahead`): written at once,
its answer read when its thread next calls, or when it is waited for. Redis runs a
connection's calls in the order they came, so the thread's later calls find it done; the
thread does not sit out a round trip for each write it needs no answer to yet (the
simulated fleet's changes, the words between them: five of a one-host component's eleven
calls). Only a write whose failure the caller may learn late should go ahead: the calls
the thread sends ahead after it are run even so, and must be fenced by what they check
themselves (the store's are by the component's lease).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import hiredis
import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError

__all__ = ["PUSHED_IF_BOUND_LUA", "Ahead", "Argument", "KeptConnections", "Lua"]

Argument = str | bytes | int | float
_T = TypeVar("_T")


@dataclass(frozen=True)
class Lua:
    """A Lua script, and the SHA-1 by which Redis keeps it once it has been sent."""

    script: str
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.script.encode()).hexdigest())


# A Lua function for the scripts that push a message where an exchange routes it: push
# ``payload`` onto each of the ``lists`` only if the set ``bindings`` holds exactly
# ``members`` (the bindings the message was routed by), and say whether it did. The
# members' check is one call: Lua unpacks a few thousand values at once, so a caller
# passes no more than that.
PUSHED_IF_BOUND_LUA: Final = """
local function pushed_if_bound(bindings, members, lists, payload)
  if redis.call('SCARD', bindings) ~= #members then return false end
  if #members > 0 then
    for _, found in ipairs(redis.call('SMISMEMBER', bindings, unpack(members))) do
      if found == 0 then return false end
    end
  end
  for _, list in ipairs(lists) do redis.call('LPUSH', list, payload) end
  return true
end
"""


class KeptConnections:
    """Calls on connections of ``pool``, kept in a stack.

    A connection is taken by one call at a time and put back after; as many exist as
    calls have run at once. They are closed with the pool (which counts them as in use).
    Not for use across a fork (Drover's processes run their work in threads).
    """

    def __init__(self, pool: redis.ConnectionPool):
        self.pool = pool
        self._idle: list[Connection] = []
        self._owing = threading.local()  # .line: the thread's _Line, while answers are owed
        # Scripts sent ahead, loaded first: an EVALSHA that Redis answers "no such script"
        # cannot be sent again once others went after it. Forgotten when Redis is
        # reached anew (restarted, it knows none) or answers so (flushed).
        self._loaded: set[str] = set()

    def script(self, script: Lua, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        """``script``'s answer, run on ``keys`` and ``args``."""
        return self._call(lambda connection: _run(connection, script, keys, args))

    def command(self, *command: Argument) -> Any:
        """The answer to one ``command`` (its name, then its arguments)."""
        return self._call(lambda connection: _send(connection, _packed(*command)))

    def script_ahead(
        self,
        script: Lua,
        keys: Sequence[str],
        args: Sequence[Argument],
        answer: Callable[[Any], _T],
    ) -> Ahead[_T]:
        """``script`` sent on this thread's connection without waiting for its answer,
        which ``answer`` makes the caller's (or raises the caller's error with) once read.

        It is read by :meth:`Ahead.wait`, or with the others the thread is owed before
        its next call here (:meth:`settle`), which raises the first failure among them
        that nobody waited for: the thread learns of it before it writes anything more.
        """
        line = getattr(self._owing, "line", None)
        if line is None:
            line = self._owing.line = _Line(self._take(), self._loaded)
        if script.sha not in self._loaded:
            line.load(script)
        ahead = Ahead(line, script, answer)
        line.send(ahead, ("EVALSHA", script.sha, len(keys), *keys, *args))
        return ahead

    def settle(self) -> None:
        """Read every answer this thread is owed, and give its connection back; raise the
        first failure among them that was not waited for. A call of the thread on any
        other connection comes after this, or Redis might run it first."""
        line = self._give_back()
        if line is not None:
            line.raise_unlearned()

    def forget(self) -> None:
        """Read every answer this thread is owed, and give its connection back; what
        failed is not raised: the work it was for is over (given up, or ended)."""
        self._give_back()

    def _give_back(self) -> _Line | None:
        line: _Line | None = getattr(self._owing, "line", None)
        if line is None:
            return None
        self._owing.line = None
        try:
            line.read_all()
        finally:
            self._idle.append(line.connection)  # read to the end, or dropped: fit to go back
        return line

    def _call(self, send: Callable[[Connection], Any]) -> Any:
        self.settle()  # a call waited for comes after any failure sent ahead of it is known
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
            connection = self.pool.get_connection()
            connection.register_connect_callback(self._reconnected)
            return connection
        # As the pool checks what it hands out: a connection the server closed while it
        # was idle (a restart) is made again, rather than failing the call sent on it.
        self.pool.ensure_connection(connection)
        return connection

    def _reconnected(self, _connection: Connection) -> None:
        self._loaded.clear()


class Ahead(Generic[_T]):
    """A call sent ahead (:meth:`KeptConnections.script_ahead`), its answer not read yet."""

    __slots__ = ("_answer", "_error", "_learned", "_line", "_made_of", "_read", "script")

    def __init__(
        self, line: _Line, script: Lua, answer: Callable[[Any], _T], *, learned: bool = False
    ):
        self._line = line
        self.script = script
        self._made_of = answer
        self._read = False
        self._learned = learned  # its failure raised to the thread already
        self._answer: _T | None = None
        self._error: Exception | None = None

    def done(self) -> bool:
        """Whether its answer is read: :meth:`wait` then answers at once."""
        return self._read

    def wait(self) -> _T:
        """Its answer; raise its error. Only the thread that sent it may wait for it."""
        if not self._read:
            self._line.read_through(self)
        self._learned = True
        if self._error is not None:
            raise self._error
        return self._answer  # type: ignore[return-value]  # read, and not an error

    def settled(self, reply: Any) -> None:
        try:
            self._answer = self._made_of(reply)
        except Exception as error:  # the caller's refusal (a lease no longer held)
            self._error = error
        self._read = True

    def failed(self, error: Exception, *, learned: bool = False) -> None:
        self._error = error
        self._read = True
        self._learned = self._learned or learned

    def learn(self) -> Exception | None:
        """Its failure, if nobody has been told of it yet: the caller tells them."""
        if self._learned:
            return None
        self._learned = True
        return self._error


class _Line:
    """One thread's connection while it is owed answers to calls sent ahead, in order."""

    def __init__(self, connection: Connection, loaded: set[str]):
        self.connection = connection
        self._loaded = loaded  # the connections' scripts known loaded (KeptConnections)
        self._thread = threading.get_ident()
        self._owed: deque[Ahead[Any]] = deque()
        self._read: list[Ahead[Any]] = []  # read since the line was taken

    def load(self, script: Lua) -> None:
        """Load ``script`` ahead of its first call: its failure is that call's."""
        self.send(Ahead(self, script, _nothing, learned=True), ("SCRIPT", "LOAD", script.script))
        self._loaded.add(script.sha)

    def send(self, ahead: Ahead[Any], command: Sequence[Argument]) -> None:
        """Write ``command``, whose answer ``ahead`` is to be."""
        try:
            self.connection.send_packed_command([_packed(*command)], check_health=False)
        except redis.RedisError as error:  # raised to the sender: it learns of them all
            self._fail_owed(error, learned=True)
            raise
        self._owed.append(ahead)

    def read_through(self, ahead: Ahead[Any]) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("an answer sent ahead is read by the thread that sent it")
        while not ahead.done():
            self._read_next()

    def read_all(self) -> None:
        while self._owed:
            self._read_next()

    def raise_unlearned(self) -> None:
        """Raise the first failure nobody was told of: the thread learns of it, and of
        those after it (what a lost lease refused after the first refusal, say)."""
        failures = [error for ahead in self._read if (error := ahead.learn()) is not None]
        if failures:
            raise failures[0]

    def _read_next(self) -> None:
        ahead = self._owed.popleft()
        self._read.append(ahead)
        try:
            ahead.settled(self.connection.read_response())
        except NoScriptError as error:
            # Flushed since it was loaded: nothing of it ran, but those sent after it may
            # have, so it is not sent again here. Loaded again at the thread's next try.
            ahead.failed(error)
            self._loaded.discard(ahead.script.sha)
        except redis.ResponseError as error:  # an error reply, read whole: still in step
            ahead.failed(error)
        except redis.RedisError as error:  # the rest cannot be read either
            ahead.failed(error)
            self._fail_owed(error, learned=False)

    def _fail_owed(self, error: Exception, *, learned: bool) -> None:
        self.connection.disconnect()  # made again when next used
        while self._owed:
            owed = self._owed.popleft()
            owed.failed(error, learned=learned)
            self._read.append(owed)


def _nothing(_reply: Any) -> None:
    """What a ``SCRIPT LOAD`` answers is nobody's: the script's own call follows it."""


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
