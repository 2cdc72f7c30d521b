# kombu ships no annotations for its transports (as for orchestrator.redis_transport).
# mypy: disallow-subclassing-any=False, disallow-untyped-calls=False
"""kombu's in-memory transport, whose consumers wait for a message instead of polling.

``drover run`` and ``drover demo`` put the coordinator, the worker and the broker in one
process (``memory://``). kombu's in-memory consumer polls: every ``polling_interval`` it
asks each queue it consumes for a message, one ``get`` and one ``Empty`` raised per
queue that has none, and sleeps when none had one. A worker of a fleet of 100 services
asked 100 queues per poll, 200 polls a second, while the coordinator and the worker's
own threads waited for the interpreter; and every message waited up to a poll's
interval before it was taken.

Here a consumer looks at its queues in one pass, in kombu's fair order, taking from the
first that has a message; when none has, it waits until a message is put, acknowledged
or rejected (an acknowledgement may leave it room under its prefetch), and looks again:
at once, whichever thread it was. The wait is bounded by the transport's
``polling_interval``, so that a change it is not told of (a consumer added from another
thread) is seen no later than kombu's own poll would see it. Messages, queues, bindings,
acknowledgements and redelivery are kombu's.
"""

from __future__ import annotations

import threading
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import memory

__all__ = ["Transport"]


class _Arrivals:
    """What may let a waiting consumer take a message, counted: a consumer that looked
    before the latest one looks again rather than wait."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.count = 0

    def note(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_after(self, seen: int, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for one after the ``seen``-th."""
        with self._changed:
            if self.count == seen:
                self._changed.wait(timeout_s)


_ARRIVALS = _Arrivals()  # one broker per process, as kombu's queues are


class Channel(memory.Channel):
    def _poll(self, cycle: Any, callback: Any, timeout: float | None = None) -> None:
        """Deliver the first message waiting, looking at the queues once from where the
        last delivery left off; ``Empty`` if none has one."""
        names = cycle.resources
        start = cycle.pos
        for offset in range(len(names)):
            name = names[(start + offset) % len(names)]
            waiting = self.queues.get(name)
            if not waiting or not waiting.queue:  # a look, not a take: no lock, no raise
                continue
            try:
                message = waiting.get_nowait()
            except Empty:  # another consumer took it since the look
                continue
            cycle.pos = (start + offset + 1) % len(names)
            callback(message, name)
            return
        raise Empty()

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _ARRIVALS.note()

    def _put_fanout(
        self, exchange: str, message: Any, routing_key: str | None = None, **kwargs: Any
    ) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _ARRIVALS.note()

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        _ARRIVALS.note()  # room for one more under the prefetch limit

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        _ARRIVALS.note()


class Transport(memory.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None, **_: Any) -> None:
        """Deliver one message, waiting for one for up to ``timeout`` (forever: None);
        ``socket.timeout`` (``TimeoutError``) if none came, as kombu's transports do."""
        channels = self.cycle
        assert channels is not None  # made with the transport
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            seen = _ARRIVALS.count
            try:
                channels.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            left = self.polling_interval if deadline is None else deadline - monotonic()
            if left <= 0:
                raise TimeoutError()  # socket.timeout, which kombu callers expect
            _ARRIVALS.wait_after(seen, min(left, self.polling_interval))
