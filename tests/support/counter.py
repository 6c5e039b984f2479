"""The counter upstream: a real stdio MCP server whose every received tool call is a line in a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.support.harness import Harness

SERVER = Path(__file__).with_name("counter_server.py")


def counter_manifest(log: Path, name: str = "counter", **extra: Any) -> dict[str, Any]:
    log.touch()  # the sandbox grants the server this one file, which must exist to be granted
    return {
        "name": name,
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVER), str(log)],
        "tools": "*",
        "sandbox": {"read": [str(SERVER)], "write": [str(log)]},
        **extra,
    }


def agent(budget: dict[str, Any], **grant: Any) -> dict[str, Any]:
    """An agents.yaml entry granted the counter's tools under `budget`."""
    return {"owner": "ops@example.com", "grant": {"tools": ["counter.*"], "budget": budget, **grant}}


def stop_of(result: Any) -> dict[str, Any]:
    """The structured detail of a stop result (asserting it is one)."""
    assert result.is_error, result
    detail: dict[str, Any] = result.meta["gateway/stop"]
    return detail


async def sid_of(gw: Harness, token: str) -> str:
    return gw.gateway.tokens.verify(token).sid


def upstream_calls(log: Path) -> list[str]:
    """The tool calls the upstream has received so far."""
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []
