"""Process logging: structlog over the standard library, JSON lines when not on a terminal.

Every line, structlog's or a standard-library logger's, is one object: `ts` (ISO 8601, UTC),
`level`, `event` (the message), `logger`, and the context bound for the request being served
(the edge binds `request_id`, `agent`, `sid`, `mcp_session`; see `gateway.http.edge`). On a terminal
the same lines are shown by structlog's console renderer, string values escaped (`safe`); in
JSON, the encoder's own escaping is all that is needed.

Operational logs only; the audit stream is separate and never goes through here.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.terminal import safe

# The fields of the canonical request line (`extra=` of a standard-library call). Other libraries' extras (uvicorn's
# ANSI `color_message`, …) are left out.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "agent", "sid", "mcp_session")


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
        structlog.stdlib.ExtraAdder(allow=REQUEST_FIELDS),  # the edge's canonical line; no other library's extras
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([_terminal_safe] if console else [structlog.processors.format_exc_info]),  # a traceback: one string
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # a Python warning is a log line too (py.warnings), not raw text amid the JSON
    root.setLevel(level)
    for noisy in ("mcp", "httpx", "httpx2", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
