"""Logging wiring: structlog, JSON when not on a terminal, context bound per message.

Every line a process writes while handling a message carries that message's release,
service, step and id, because :func:`message_context` binds them for the duration.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

__all__ = ["configure_logging", "get_logger", "message_context"]


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
) -> None:
    """Set up structlog (and the stdlib loggers of kombu and Celery) for one process."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # The libraries are chatty at INFO (every connection, every task); their warnings
    # and errors are what on-call needs from them.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


@contextmanager
def message_context(**fields: Any) -> Iterator[None]:
    """Bind fields (release_id, service, step, message_id, actor) to every log line inside."""
    known = {k: v for k, v in fields.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**known):
        yield
