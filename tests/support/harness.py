"""A real gateway for tests: config files in a temp dir, uvicorn on a free 127.0.0.1 port, real upstreams.

Everything runs in the test's own event loop, so tests can reach the gateway's
collaborators (store, sessions, audit) directly and inject a clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.app import Gateway, build_gateway, create_app
from gateway.config.files import load_gateway_config
from gateway.http.limits import server_options
from gateway.upstream.http_client import mcp_http_client
from tests.support.postgres import database_for, store_under_test
from tests.support.processes import serving
from tests.support.records import audit_records

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PRELOAD = Path(__file__).with_name("loopback-preload.cjs")
STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    """Real time plus an offset tests can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# ------------------------------------------------------------------ manifests


# A raw handshake-era initialize, and the headers a streamable-HTTP POST needs (for tests that speak HTTP directly).
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def time_manifest(**extra: Any) -> dict[str, Any]:
    return {
        "name": "time",
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        "tools": "*",
        **extra,
    }


def everything_stdio_manifest(name: str = "everything", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": "node",
        "args": [str(EVERYTHING), "stdio"],
        "tools": "*",
        **extra,
    }


SERVERS = Path(__file__).with_name("servers")


def dynamic_manifest(name: str = "dynamic", **extra: Any) -> dict[str, Any]:
    """tests/support/servers/dynamic.py: audio, run-time tools, its environment, slow calls."""
    return {
        "name": name,
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVERS / "dynamic.py")],
        "tools": "*",
        "sandbox": {"read": [str(SERVERS)]},
        **extra,
    }


def http_manifest(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "owner": "platform@example.com", "transport": "http", "url": url, "tools": "*", **extra}


@contextlib.asynccontextmanager
async def everything_http() -> AsyncIterator[str]:
    """server-everything over streamable HTTP on a free loopback port; yields its /mcp URL."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "HOME": os.environ.get("HOME", "/tmp")}
    argv = ["node", "-r", str(PRELOAD), str(EVERYTHING), "streamableHttp"]
    async with serving(argv, b"listening on port", env=env, timeout=STARTUP_TIMEOUT):
        yield f"http://127.0.0.1:{port}/mcp"


# ------------------------------------------------------------------ the gateway


@contextlib.asynccontextmanager
async def connect(
    url: str, token: str, *, mode: str = "auto", headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    """The official SDK client on `url` with a bearer token (and `headers` on every request)."""
    http = mcp_http_client(headers={"Authorization": f"Bearer {token}", **(headers or {})})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None, **kwargs) as client:
            yield client


DEFAULT_AGENTS: dict[str, Any] = {
    "alice-bot": {
        "owner": "alice@example.com",
        "cost_center": "research",
        "grant": {"tools": ["time.*"], "resources": [], "prompts": []},
    },
    "bob-bot": {
        "owner": "bob@example.com",
        "cost_center": "ops",
        "grant": {"tools": ["time.get_current_time"]},
    },
    "nobody-bot": {"owner": "nobody@example.com"},
}


@dataclass
class Harness:
    root: Path
    port: int
    gateway: Gateway
    clock: Clock
    server: uvicorn.Server
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def server_url(self, name: str) -> str:
        return f"{self.url}/servers/{name}/mcp"

    async def open_session(self, agent: str, **kwargs: Any) -> str:
        _, token = await self.gateway.sessions.open(agent, via="test", **kwargs)
        return token

    def client(
        self, token: str, *, url: str | None = None, mode: str = "auto", **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        return connect(url or self.mcp_url, token, mode=mode, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        return audit_records(self.gateway.config.audit.path, event)


def write_config(
    root: Path,
    port: int,
    *,
    manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    interactive: dict[str, Any] | None = None,
) -> Path:
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    for manifest in manifests:
        (root / "manifests" / f"{manifest['name']}.yaml").write_text(yaml.safe_dump(manifest))
    agents_file: dict[str, Any] = {"agents": agents if agents is not None else DEFAULT_AGENTS}
    if interactive:
        agents_file["interactive"] = interactive
    (root / "agents.yaml").write_text(yaml.safe_dump(agents_file))
    config = {
        "public_url": f"http://127.0.0.1:{port}",
        "listen": {"host": "127.0.0.1", "port": port},
        "state_dir": "./state",
        "signing_key": "./state/signing.pem",
        "store": "sqlite:///state/gateway.db",
        "audit": {"path": "./state/audit.jsonl", "fsync": "always"},
        "manifests": "./manifests",
        "agents": "./agents.yaml",
        "call_timeout": "20s",
        **(extra or {}),
    }
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_gateway(
    root: Path,
    *,
    manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    port: int | None = None,
    clock: Clock | None = None,
    fast: bool | None = None,
    interactive: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    """Start a gateway with these manifests and agents; stop it (and reap every upstream) on exit.

    With GATEWAY_TEST_STORE=postgres (and no `store` in `extra`) it runs on a database of its own. `fast` picks
    uvicorn's HTTP implementation as `serve` does (httptools, else h11; default: httptools when installed).
    """
    if store_under_test() == "postgres" and "store" not in (extra or {}):
        async with database_for(root) as dsn:
            async with running_gateway(
                root,
                manifests=manifests,
                agents=agents,
                extra={**(extra or {}), "store": dsn},
                port=port,
                clock=clock,
                fast=fast,
                interactive=interactive,
            ) as harness:
                yield harness
        return
    port = port or free_port()
    config_path = write_config(root, port, manifests=manifests, agents=agents, extra=extra, interactive=interactive)
    clock = clock or Clock()
    gateway = build_gateway(load_gateway_config(config_path), clock=clock, config_path=config_path)
    app = create_app(gateway)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=2,
            **server_options(gateway.config.http, fast=fast),
        )
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # bound before serving: clients queue in the backlog, never race startup
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()  # uvicorn closes it only on a clean shutdown: a failed test must not leak it into the next
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(STARTUP_TIMEOUT):
            async with anyio.create_task_group() as wait:

                async def ready() -> None:
                    await gateway.ready.wait()
                    wait.cancel_scope.cancel()

                async def failed() -> None:
                    await stopped.wait()
                    raise RuntimeError("the gateway stopped during startup")

                wait.start_soon(ready)
                wait.start_soon(failed)
        try:
            yield Harness(root, port, gateway, clock, server)
        finally:
            server.should_exit = True
