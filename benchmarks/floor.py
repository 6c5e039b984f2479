"""The floor under the gateway: the SDK's own streamable-HTTP server, with no gateway logic.

    python benchmarks/floor.py --port N [--bridge] [--json]

Without --bridge it answers `echo` in process. With --bridge it forwards `echo` to
server-everything over stdio through one SDK client session: a bare stdio->HTTP bridge, no
auth, no session store, no audit. overhead.py runs both beside the gateway so the report can
say what the SDK transport costs and what the gateway's controls add on top.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route

EVERYTHING = Path(__file__).resolve().parents[1] / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
ECHO = types.Tool(name="echo", input_schema={"type": "object", "properties": {"message": {"type": "string"}}})


def build(bridge: bool, json_response: bool) -> Starlette:
    upstream: dict[str, Any] = {}

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[ECHO])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if bridge:
            return await upstream["client"].session.call_tool(params.name, params.arguments)  # type: ignore[no-any-return]
        message = (params.arguments or {}).get("message", "")
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"Echo: {message}")])

    server: Server[Any] = Server(
        "floor", on_list_tools=list_tools, on_call_tool=call_tool, get_tool_input_schema=lambda name: None
    )
    server.middleware = []
    manager = StreamableHTTPSessionManager(app=server, json_response=json_response)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if bridge:
                params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
                upstream["client"] = await stack.enter_async_context(Client(params, cache=None))
            await stack.enter_async_context(manager.run())
            yield

    return Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager))], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bridge", action="store_true")
    parser.add_argument("--json", action="store_true", help="JSON responses instead of SSE")
    args = parser.parse_args()
    fast = "uvloop" in sys.modules or __import__("importlib").util.find_spec("uvloop") is not None
    uvicorn.run(
        build(args.bridge, args.json),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop" if fast else "asyncio",
        http="httptools" if fast else "h11",
    )


if __name__ == "__main__":
    main()
