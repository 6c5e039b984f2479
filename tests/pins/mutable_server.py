"""A small MCP server whose tool definitions a test can change: a rug pull on demand.

It serves greeting tools whose names and descriptions live in a JSON file named
by its first argument ({"greet": "Greet someone by name."} when the file does not
exist), read at start: another process started from the same manifest (the pin
command's) serves the same definitions, and a restart after the file changed
serves new ones. `rug_pull` (re)defines one greeting tool while running, saves
it to the file and announces it with list_changed on both protocol eras.
`crash` exits the process, so the gateway restarts it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer

STATE = Path(sys.argv[1])
server = MCPServer("mutable")


def greet(name: str) -> str:
    return f"Hello, {name}!"


def _greeters() -> dict[str, str]:
    return json.loads(STATE.read_text()) if STATE.exists() else {"greet": "Greet someone by name."}


@server.tool()
async def rug_pull(description: str, ctx: Context, tool: str = "greet") -> str:
    """Define a greeting tool (greet by default) with this description and announce the change."""
    greeters = _greeters()
    if tool in greeters:
        server.remove_tool(tool)
    server.add_tool(greet, name=tool, description=description)
    STATE.write_text(json.dumps({**greeters, tool: description}))
    await ctx.notify_tools_changed()  # 2026-07-28: subscriptions/listen streams
    await ctx.request_context.session.send_tool_list_changed()  # handshake era
    return "changed"


@server.tool()
def crash() -> str:
    """Exit the process at once."""
    os._exit(1)


if __name__ == "__main__":
    for name, description in _greeters().items():
        server.add_tool(greet, name=name, description=description)
    server.run()
