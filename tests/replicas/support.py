"""Gateway replicas for tests: real `mcp-gateway serve` processes on one PostgreSQL database.

Each replica has its own directory (config, state, audit file) and port; they
share the database and a `public_url` (the address a load balancer would give
them), so a token any of them issues is valid on all.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client

from tests.support.harness import STARTUP_TIMEOUT, Harness, connect, free_port, running_gateway, write_config

READY_LINE = b"Application startup complete."


@dataclass
class Replica:
    """A gateway running in its own process."""

    root: Path
    port: int
    config: Path
    stderr: bytearray

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def client(self, token: str, *, mode: str = "auto", **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Client]:
        return connect(self.mcp_url, token, mode=mode, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        return audit_records(self.root / "state" / "audit.jsonl", event)


def audit_records(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if event is None or r["event"] == event]


def replica_extra(dsn: str, public_url: str, instance: str) -> dict[str, Any]:
    """gateway.yaml fields that make a gateway one replica of a set."""
    return {"store": dsn, "public_url": public_url, "instance": instance}


@contextlib.asynccontextmanager
async def serve_replica(
    root: Path, *, dsn: str, public_url: str, instance: str, manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
) -> AsyncIterator[Replica]:
    """`mcp-gateway serve` in a subprocess; ready once uvicorn reports startup complete."""
    port = free_port()
    config = write_config(root, port, manifests=manifests, agents=agents,
                          extra=replica_extra(dsn, public_url, instance))
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    replica = Replica(root, port, config, bytearray())
    ready = anyio.Event()

    async def drain() -> None:  # keep reading, or the process blocks on a full pipe
        assert process.stderr is not None
        async for chunk in process.stderr:
            replica.stderr += chunk
            if READY_LINE in replica.stderr:
                ready.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            with anyio.fail_after(STARTUP_TIMEOUT):
                await ready.wait()
            try:
                yield replica
            finally:
                process.terminate()
                with anyio.move_on_after(10):
                    await process.wait()
                tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


@contextlib.asynccontextmanager
async def in_process_replica(
    root: Path, *, dsn: str, public_url: str, instance: str, manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    """A replica in the test's own event loop, so tests can reach its store and sessions directly."""
    async with running_gateway(root, manifests=manifests, agents=agents,
                               extra=replica_extra(dsn, public_url, instance)) as harness:
        yield harness


async def cli(replica_config: Path, *args: str) -> str:
    """Run an operator command against a replica's configuration; returns its stdout."""
    done = await anyio.run_process(
        [sys.executable, "-m", "gateway", *args, "--config", str(replica_config)], check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}


async def mcp_status(url: str, token: str) -> httpx.Response:
    """An MCP request over plain HTTP, to read the status code and challenge a replica answers with."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.post("/mcp", json=INITIALIZE, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"})
