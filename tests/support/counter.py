"""The counter upstream: a real stdio MCP server whose every received tool call is a line in a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SERVER = Path(__file__).with_name("counter_server.py")


def counter_manifest(log: Path, name: str = "counter", **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "owner": "platform@example.com", "transport": "stdio", "command": sys.executable,
        "args": [str(SERVER), str(log)], "tools": "*", **extra,
    }


def upstream_calls(log: Path) -> list[str]:
    """The tool calls the upstream has received so far."""
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []
