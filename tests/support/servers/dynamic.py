"""A small real MCP server (official SDK, stdio) for what server-everything cannot show.

- `speak` returns audio content;
- `grow` registers a new tool and announces list_changed;
- `whoami` returns the environment variables it can see (to prove the minimal environment);
- `slow` answers after `seconds`, for timeouts;
- `count` returns how many calls this process has served (to prove what never reached it);
- `meta` returns the `_meta` its call arrived with (to prove what the gateway propagates, e.g. traceparent).
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.utilities.types import Audio

server = MCPServer("dynamic")
calls = 0


def _counted() -> None:
    global calls
    calls += 1


@server.tool()
def speak() -> Audio:
    """Return a short audio clip."""
    _counted()
    return Audio(data=b"RIFF\x24\x00\x00\x00WAVEfmt ", format="wav")


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Register a new tool called `name` and announce it."""
    _counted()

    def added() -> str:
        """A tool added at run time."""
        return f"I am {name}"

    server.add_tool(added, name=name)
    await ctx.notify_tools_changed()  # 2026-07-28 clients listen for it
    if ctx.request_context.protocol_version != "2026-07-28":
        await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
def whoami() -> dict[str, str]:
    """The environment this server runs with."""
    _counted()
    return dict(os.environ)


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after a while."""
    import anyio

    _counted()
    await anyio.sleep(seconds)
    return "done"


@server.tool()
def count() -> int:
    """How many calls this process has served before this one."""
    return calls


@server.tool()
def meta(ctx: Context) -> dict[str, Any]:
    """The `_meta` of this call's request."""
    _counted()
    return dict(ctx.request_context.meta or {})


if __name__ == "__main__":
    server.run("stdio")
