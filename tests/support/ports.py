"""A port on this machine that nothing listens on, for a server a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free as it is picked: pick it once the test's own servers hold theirs, or
    the system may hand it to one of them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
