"""Process logging: structlog over the standard library, JSON when not on a terminal.

Operational logs only; the audit stream is separate and never goes through here.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.terminal import safe


def _terminal_safe(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """On a terminal, string values (which may quote agents and tool servers) are shown escaped."""
    return {key: safe(value) if isinstance(value, str) else value for key, value in event.items()}


def configure(level: str = "INFO") -> None:
    console = sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, *([_terminal_safe] if console else []),
            renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("mcp", "httpx", "httpx2", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
