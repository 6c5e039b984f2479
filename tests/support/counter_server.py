"""A real stdio MCP server that writes one line per tool call it receives to a file.

Tests read the file to prove what reached the upstream (and what did not):
`python -m tests.support.counter_server PATH`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

LOG = Path(sys.argv[1])
server = MCPServer("counter")


def _seen(line: str) -> None:
    with LOG.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    _seen(f"echo {text}")
    return text


@server.tool()
def words(count: int) -> str:
    """Return `count` words of prose."""
    _seen(f"words {count}")
    return " ".join(f"word{i}" for i in range(count))


if __name__ == "__main__":
    server.run("stdio")
