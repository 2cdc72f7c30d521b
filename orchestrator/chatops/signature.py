"""Slack's request signing: HMAC-SHA256 of ``v0:<timestamp>:<raw body>`` with the app's secret.

A request is refused unless it carries a valid signature over its exact bytes and a
timestamp close to now; the timestamp is signed too, so an old request cannot be replayed
with a fresh one. Reasons say what is wrong with the request, never what the secret is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "SignatureRefused",
    "sign",
    "verify",
]

TIMESTAMP_HEADER: Final = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER: Final = "X-Slack-Signature"
# Slack's advice: five minutes either way covers clock skew, and no more, to bound replays.
TOLERANCE_S: Final = 300

# Whole seconds only: the timestamp goes into the signed string verbatim, so "+1", "1.0"
# and non-ASCII digits, which int() would accept, must not stand for the same moment.
_TIMESTAMP: Final = re.compile(r"^[0-9]{1,15}$")
_SIGNATURE: Final = re.compile(r"^v0=[0-9a-fA-F]{64}$")


class SignatureRefused(Exception):
    """The request is not from the chat server, or not recent enough to trust."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(signing_secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value for this timestamp and body."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def verify(signing_secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Return if the request is signed with ``signing_secret`` and recent; else refuse it."""
    if not signing_secret:
        # An empty key would make every signature computable by anyone.
        raise SignatureRefused("no signing secret is configured")
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    _check_recent(timestamp, now)
    if not _SIGNATURE.match(signature):
        raise SignatureRefused(f"{SIGNATURE_HEADER} is not of the form v0=<64 hex digits>")
    expected = sign(signing_secret, timestamp, body)
    # Constant time, so the time taken does not tell an attacker how much of a guess was right.
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureRefused(f"{SIGNATURE_HEADER} does not match the request body")


def _header(headers: Mapping[str, str], name: str) -> str:
    """The one value of a header, whatever the case of its name (HTTP names are not cased)."""
    values = {value for key, value in headers.items() if key.lower() == name.lower()}
    if not values:
        raise SignatureRefused(f"missing {name} header")
    if len(values) > 1:
        raise SignatureRefused(f"{name} is given more than once, with different values")
    return values.pop().strip()


def _check_recent(timestamp: str, now: float) -> None:
    if not _TIMESTAMP.match(timestamp):
        raise SignatureRefused(f"{TIMESTAMP_HEADER} is not a whole number of seconds")
    skew = now - int(timestamp)
    if abs(skew) > TOLERANCE_S:
        when = "old" if skew > 0 else "in the future"
        raise SignatureRefused(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {when}: more than {TOLERANCE_S} s"
            " from now (a replayed request, or a clock that is off)"
        )
