"""A real StatsD listener for tests: a UDP socket on 127.0.0.1 and what arrived on it.

``with StatsdListener() as statsd:`` binds a free port (``statsd.port``) and collects
every datagram on a thread until the block ends. A datagram may hold several lines
(the ``statsd`` client's pipelines, e.g. a negative gauge): each line is one
:class:`Packet`, parsed from StatsD's ``name:value|type[|@rate]``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = ["Packet", "StatsdListener", "parse"]

_POLL_S = 0.05  # how soon the thread notices it is to stop


@dataclass(frozen=True)
class Packet:
    name: str
    value: str  # as sent: "1", "1234.500000", "-3"
    type: str  # "c", "ms", "g", "s"; "invalid" for a line that is not StatsD
    rate: float | None = None

    @property
    def number(self) -> float:
        return float(self.value)


def parse(line: str) -> Packet:
    """One StatsD line; a line that is not StatsD is kept, typed ``invalid``, to be seen."""
    name, colon, rest = line.partition(":")
    fields = rest.split("|")
    if not colon or len(fields) < 2 or not name:
        return Packet(name=line, value="", type="invalid")
    rate = float(fields[2][1:]) if len(fields) > 2 and fields[2].startswith("@") else None
    return Packet(name=name, value=fields[0], type=fields[1], rate=rate)


class StatsdListener:
    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(_POLL_S)
        self.port: int = self._socket.getsockname()[1]
        self._arrived = threading.Condition()
        self._datagrams: list[bytes] = []
        self._packets: list[Packet] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="statsd-listener", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and free the port: whatever is sent there afterwards is lost."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._socket.close()

    @property
    def datagrams(self) -> list[bytes]:
        with self._arrived:
            return list(self._datagrams)

    @property
    def packets(self) -> list[Packet]:
        with self._arrived:
            return list(self._packets)

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Packet]:
        """Every packet so far, once at least ``count`` have arrived."""
        self._wait(lambda: len(self._packets) >= count, f"{count} packets", timeout_s)
        return self.packets

    def wait_for_name(self, name: str, timeout_s: float = 5.0) -> list[Packet]:
        """Every packet so far, once one named ``name`` has arrived."""
        self._wait(lambda: any(p.name == name for p in self._packets), name, timeout_s)
        return self.packets

    def take_until(self, name: str, timeout_s: float = 5.0) -> list[Packet]:
        """The packets before the first named ``name``, which are removed with it.

        A test sends a marker after what it checks: UDP on loopback keeps one socket's
        order, so when the marker is here everything sent before it is too, and nothing
        has to be waited out to show that no more came.
        """
        self.wait_for_name(name, timeout_s)
        with self._arrived:
            index = next(i for i, p in enumerate(self._packets) if p.name == name)
            taken = self._packets[:index]
            del self._packets[: index + 1]
            return taken

    def _wait(self, done: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout_s}s; got {self._packets}")
                self._arrived.wait(left)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                datagram, _ = self._socket.recvfrom(65_535)
            except TimeoutError:
                continue
            except OSError:
                return  # the socket was closed
            lines = datagram.decode("utf-8", errors="replace").split("\n")
            with self._arrived:
                self._datagrams.append(datagram)
                self._packets.extend(parse(line) for line in lines if line)
                self._arrived.notify_all()
