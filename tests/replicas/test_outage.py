"""The database goes away mid-run: every replica refuses (fail closed), says why, and recovers with nothing lost."""

from __future__ import annotations

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.identity.support import mcp_status
from tests.replicas.support import Replica, database_away, in_process_replica, serve_replica, upstream_count
from tests.support.harness import Harness, connect, dynamic_manifest, free_port
from tests.support.postgres import database

pytestmark = pytest.mark.anyio

AGENTS = {
    "speaker": {"owner": "alice@example.com", "grant": {"tools": ["dynamic.speak"], "budget": {"session_calls": 50}}},
    "meter-bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.count"]}},
}


async def speak(url: str, token: str) -> bool:
    async with connect(url, token) as client:
        return not (await client.call_tool("dynamic__speak", {})).is_error


async def readiness(replica: Harness | Replica) -> httpx.Response:
    async with replica.http() as http:
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
                for replica in (a, b):
                    refused = await mcp_status(replica, token)
                    assert refused.status_code == 503, refused.text
                    assert refused.json()["error"] == "temporarily_unavailable"
                    ready = await readiness(replica)
                    assert ready.status_code == 503
                    assert ready.json()["problems"]["store"].startswith("session store unavailable")
                with pytest.raises(MCPError):  # a client already connected is refused too
                    await open_client.call_tool("dynamic__speak", {})

            for replica in (a, b):
                assert (await readiness(replica)).status_code == 200
            assert not (await open_client.call_tool("dynamic__speak", {})).is_error
        assert await speak(a.mcp_url, token) and await speak(b.mcp_url, token)

        stored = await a.gateway.store.get_session(session.sid)
        assert stored is not None and (stored.state, stored.calls) == ("active", 6)
        meter = await a.open_session("meter-bot")
        assert [await upstream_count(url, meter) for url in (a.mcp_url, b.mcp_url)] == [2, 4]
