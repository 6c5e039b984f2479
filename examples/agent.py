"""A scripted agent: connects to the gateway with its session token, lists and calls tools.

python examples/agent.py --url http://127.0.0.1:8765/mcp --token <session token>
"""

from __future__ import annotations

import argparse

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            print("granted tools:", ", ".join(t.name for t in tools.tools))
            result = await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
            print("time__get_current_time ->", result.content[0].text)  # type: ignore[union-attr]
            result = await client.call_tool(
                "git__git_log", {"repo_path": "/tmp/mcp-gateway-quickstart/repos/demo", "max_count": 1}
            )
            print("git__git_log ->", result.content[0].text.splitlines()[:3])  # type: ignore[union-attr]
            denied = await client.call_tool(
                "time__convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
            )
            print("outside the grant's constraint ->", denied.content[0].text)  # type: ignore[union-attr]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8765/mcp")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    anyio.run(main, args.url, args.token)
