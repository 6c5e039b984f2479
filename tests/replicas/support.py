"""Gateway replicas for tests: real `mcp-gateway serve` processes on one PostgreSQL database.

Each replica has its own directory (config, state, audit file) and port; they
share the database and a `public_url` (the address a load balancer would give
them), so a token any of them issues is valid on all.
"""

from __future__ import annotations

import contextlib
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
from tests.support.postgres import admin
from tests.support.records import audit_records

READY_LINE = b"Application startup complete."


@dataclass
class Replica:
    """A gateway running in its own process."""

    root: Path
    port: int
    public_url: str  # shared by every replica: what a load balancer would be reached at
    stderr: bytearray

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def client(
        self, token: str, *, mode: str = "auto", **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        return connect(self.mcp_url, token, mode=mode, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        return audit_records(self.root / "state" / "audit.jsonl", event)


def replica_extra(dsn: str, public_url: str, instance: str, **extra: Any) -> dict[str, Any]:
    """gateway.yaml fields that make a gateway one replica of a set (plus any others)."""
    return {"store": dsn, "public_url": public_url, "instance": instance, **extra}


@contextlib.asynccontextmanager
async def serve_replica(
    root: Path,
    *,
    dsn: str,
    public_url: str,
    instance: str,
    manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
    **extra: Any,
) -> AsyncIterator[Replica]:
    """`mcp-gateway serve` in a subprocess; ready once uvicorn reports startup complete."""
    port = free_port()
    config = write_config(
        root, port, manifests=manifests, agents=agents, extra=replica_extra(dsn, public_url, instance, **extra)
    )
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    replica = Replica(root, port, public_url, bytearray())
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
    root: Path,
    *,
    dsn: str,
    public_url: str,
    instance: str,
    manifests: list[dict[str, Any]],
    agents: dict[str, Any] | None = None,
    **extra: Any,
) -> AsyncIterator[Harness]:
    """A replica in the test's own event loop, so tests can reach its store and sessions directly."""
    async with running_gateway(
        root, manifests=manifests, agents=agents, extra=replica_extra(dsn, public_url, instance, **extra)
    ) as harness:
        yield harness


async def upstream_count(url: str, token: str) -> int:
    """How many calls the `dynamic` test server behind `url` has served (tests/support/servers/dynamic.py)."""
    async with connect(url, token) as client:
        result = await client.call_tool("dynamic__count", {})
    return int(result.content[0].text)  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def database_away(dsn: str) -> AsyncIterator[None]:
    """Cut every connection to the database and refuse new ones, until the block exits."""
    name = dsn.rsplit("/", 1)[1]
    await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        yield
    finally:
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
