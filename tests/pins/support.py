"""Helpers for the pin tests: the mutable server's manifest, the real CLI, and waits on what agents see."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import Harness

MUTABLE_SERVER = Path(__file__).with_name("mutable_server.py")
WAIT = 15.0


def mutable_manifest(root: Path, **extra: Any) -> dict[str, Any]:
    """The test's own server (mutable_server.py); its greeting tools live in <root>/greeters.json."""
    state = root / "greeters.json"
    if not state.exists():  # the sandbox grants the server this one file, which must exist to be granted
        state.write_text(json.dumps({"greet": "Greet someone by name."}))  # what the server serves without it
    return {
        "name": "mutable",
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(MUTABLE_SERVER), str(state)],
        "tools": "*",
        "sandbox": {"read": [str(MUTABLE_SERVER)], "write": [str(state)]},
        **extra,
    }


async def mcp_gateway(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the real `mcp-gateway` command against <root>/gateway.yaml, without a terminal."""
    return await anyio.run_process(
        [sys.executable, "-m", "gateway", *args, "--config", str(root / "gateway.yaml")],
        check=False,
        stdin=subprocess.DEVNULL,
    )


class ToolListChanges:
    """Waits for a gateway to announce that a server's tool list (what agents may see) changed."""

    def __init__(self, gw: Harness) -> None:
        self._event: anyio.Event | None = None
        gw.gateway.upstreams.on_change(self._seen)

    async def _seen(self, server: str, kind: str) -> None:
        if kind == "tools" and self._event is not None:
            self._event.set()

    @contextlib.asynccontextmanager
    async def expect(self) -> AsyncIterator[None]:
        self._event = event = anyio.Event()
        yield
        with anyio.fail_after(WAIT):
            await event.wait()


async def visible_tools(gw: Harness, token: str, server: str) -> dict[tuple[str, str], set[str]]:
    """What one agent lists, on both endpoints and in both protocol eras."""
    seen = {}
    for url in (gw.mcp_url, gw.server_url(server)):
        for mode in ("legacy", "auto"):
            async with gw.client(token, url=url, mode=mode) as client:
                seen[(url, mode)] = {tool.name for tool in (await client.list_tools()).tools}
    return seen


async def unknown_everywhere(gw: Harness, token: str, server: str, tool: str) -> None:
    """A call to this tool gets the unknown-tool error on both endpoints, in both eras."""
    for url, name in ((gw.mcp_url, f"{server}__{tool}"), (gw.server_url(server), tool)):
        for mode in ("legacy", "auto"):
            async with gw.client(token, url=url, mode=mode) as client:
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(name, {"name": "Ada"})
                assert caught.value.error.message == f"Unknown tool: {name}"
