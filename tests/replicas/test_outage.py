"""The database goes away mid-run: every replica refuses (fail closed), says why, and recovers with nothing lost."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.replicas.support import in_process_replica, mcp_status, serve_replica
from tests.replicas.test_shared_state import upstream_count
from tests.support.harness import connect, dynamic_manifest, free_port
from tests.support.postgres import admin, database

pytestmark = pytest.mark.anyio

AGENTS = {
    "speaker": {"owner": "alice@example.com", "grant": {"tools": ["dynamic.speak"], "budget": {"session_calls": 50}}},
    "meter-bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.count"]}},
}


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


async def speak(url: str, token: str) -> bool:
    async with connect(url, token) as client:
        return not (await client.call_tool("dynamic__speak", {})).is_error


async def readiness(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.get("/readyz")


async def test_replicas_refuse_while_the_database_is_away_and_resume_with_nothing_lost(tmp_path):
    shared = {"public_url": f"http://127.0.0.1:{free_port()}", "manifests": [dynamic_manifest()], "agents": AGENTS}
    async with (
        database() as dsn,
        in_process_replica(tmp_path / "a", dsn=dsn, instance="replica-a", **shared) as a,
        serve_replica(tmp_path / "b", dsn=dsn, instance="replica-b", **shared) as b,
    ):
        session, token = await a.gateway.sessions.open("speaker", via="test")
        async with connect(b.mcp_url, token) as open_client:
            assert await speak(a.mcp_url, token) and await speak(b.mcp_url, token)
            assert not (await open_client.call_tool("dynamic__speak", {})).is_error

            async with database_away(dsn):
                for url in (a.url, b.url):
                    refused = await mcp_status(url, token)
                    assert refused.status_code == 503, refused.text
                    assert refused.json()["error"] == "temporarily_unavailable"
                    ready = await readiness(url)
                    assert ready.status_code == 503
                    assert ready.json()["problems"]["store"].startswith("session store unavailable")
                with pytest.raises(MCPError):  # a client already connected is refused too
                    await open_client.call_tool("dynamic__speak", {})

            for url in (a.url, b.url):
                assert (await readiness(url)).status_code == 200
            assert not (await open_client.call_tool("dynamic__speak", {})).is_error
        assert await speak(a.mcp_url, token) and await speak(b.mcp_url, token)

        stored = await a.gateway.store.get_session(session.sid)
        assert stored is not None and (stored.state, stored.calls) == ("active", 6)
        meter = await a.open_session("meter-bot")
        assert [await upstream_count(url, meter) for url in (a.mcp_url, b.mcp_url)] == [2, 4]
