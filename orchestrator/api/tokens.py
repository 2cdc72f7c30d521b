"""Who may call Drover's HTTP API, and what each caller may do.

Tokens come from a file named by ``DROVER_API_TOKENS``, never from the repository, and the
file holds only each token's SHA-256, so reading it gives nobody a token::

    tokens:
      - name: ci-pipeline
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        may: [read, "deploy:staging", "deploy:prod/payments"]
      - name: release-managers
        sha256: …
        may: [read, "approve:prod", "operate:prod"]

What a token may do: ``read`` (status, queues, releases, fleet), ``deploy:<env>`` (any
service there) or ``deploy:<env>/<service>``, ``approve:<env>`` (approve, reject),
``operate:<env>`` (abort, pause, resume, retry, locks). ``drover token`` makes a token
and its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints

from orchestrator.fleet.base import FleetModel
from orchestrator.plans import load_model

__all__ = ["ApiTokens", "Caller", "TokenEntry", "load_tokens", "new_token"]

Action = Literal["read", "deploy", "approve", "operate"]

_SCOPE: Final = re.compile(
    r"^(read|(deploy|approve|operate):[a-z0-9][a-z0-9_-]{0,62}(/([a-z0-9][a-z0-9_-]{0,62}|\*))?)$"
)
Scope = Annotated[str, StringConstraints(pattern=_SCOPE.pattern)]


class TokenEntry(FleetModel):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    may: tuple[Scope, ...] = Field(min_length=1)


class ApiTokens(FleetModel):
    tokens: tuple[TokenEntry, ...] = ()

    def caller(self, token: str) -> Caller | None:
        """The caller this token belongs to, or None; every entry is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for entry in self.tokens:
            if hmac.compare_digest(entry.sha256, digest):
                found = Caller(entry.name, entry.may)
        return found


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: Sequence[str]

    @property
    def actor(self) -> str:
        """Who the timeline says did it."""
        return f"api:{self.name}"

    def may(self, action: Action, environment: str = "", services: Sequence[str] = ()) -> bool:
        if action == "read":
            return "read" in self.scopes
        if f"{action}:{environment}" in self.scopes or f"{action}:{environment}/*" in self.scopes:
            return True
        # deploy may be granted service by service; it must cover every service asked for
        granted = {
            s.split("/", 1)[1] for s in self.scopes if s.startswith(f"{action}:{environment}/")
        }
        return bool(services) and set(services) <= granted


def load_tokens(path: Path | None) -> ApiTokens:
    """The tokens file, or no tokens at all (every call refused) when none is configured."""
    if path is None:
        return ApiTokens()
    return load_model(ApiTokens, path)


def new_token(name: str, scopes: Sequence[str]) -> tuple[str, TokenEntry]:
    """A fresh random token, and the entry for the tokens file (which holds only its hash)."""
    token = secrets.token_urlsafe(32)
    entry = TokenEntry(
        name=name, sha256=hashlib.sha256(token.encode()).hexdigest(), may=tuple(scopes)
    )
    return token, entry
