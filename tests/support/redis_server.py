"""A Redis server of the test's own, on a free port, that can be killed and started again
with what it persisted: for what the machine's shared Redis must not be put through."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Final

__all__ = ["PERSISTENT", "RedisServer"]

# Every write on disk before it is answered: a restart loses nothing, as a broker's must not.
PERSISTENT: Final = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
_START_TIMEOUT_S: Final = 10.0


class RedisServer:
    def __init__(self, folder: Path, settings: Sequence[str] = PERSISTENT):
        self.folder = folder
        self.settings = tuple(settings)
        with closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed on PATH for these tests"
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.process = subprocess.Popen([server, *where, *self.settings], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            assert time.monotonic() < deadline, "the test's redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False
