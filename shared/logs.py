"""Structured log lines: one event name plus key=value context, never secrets or number lists."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    """Idempotent root logging set-up for processes we start (API, tools)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    """`event key=value ...`: greppable, and each field is a value we chose to show."""
    context = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.log(level, "%s %s", event, context)
