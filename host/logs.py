"""Logging set-up for the `hadmc` command (the only place that configures output)."""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """Whatever sys.stderr is at write time (a test or an embedding program may swap it). On a
    terminal a log line first clears the live progress line (host.progress), which the next
    update redraws."""

    def write(self, text: str) -> int:
        if text and sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(verbosity: int = 0, json_lines: bool | None = None) -> None:
    """structlog to stderr: JSON lines when stderr is not a terminal, readable text otherwise."""
    level = logging.WARNING - 10 * verbosity if verbosity < 2 else logging.DEBUG
    level = max(logging.DEBUG, min(level, logging.WARNING))
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=True,
    )
