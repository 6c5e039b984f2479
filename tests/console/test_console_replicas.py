"""Two replicas on one PostgreSQL database: a console sign-in made on one is good on the other, and a revoke
clicked on one stops the agent's very next call on the other (the CLI's code path, through the store)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.console.support import ADMIN_TOKEN, RawAgent
from tests.replicas.support import in_process_replica, serve_replica
from tests.support.harness import free_port, time_manifest
from tests.support.postgres import database

pytestmark = pytest.mark.anyio

AGENTS = {"alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}}}


async def test_a_revoke_on_one_replicas_console_refuses_the_next_call_on_the_other(tmp_path):
    public_url = f"http://127.0.0.1:{free_port()}"  # the load balancer's address: the browser's origin
    shared = {"public_url": public_url, "manifests": [time_manifest()], "agents": AGENTS, "admin_token": ADMIN_TOKEN}
    async with (
        database() as dsn,
        in_process_replica(tmp_path / "a", dsn=dsn, instance="replica-a", **shared) as a,
        serve_replica(tmp_path / "b", dsn=dsn, instance="replica-b", **shared) as b,
    ):
        session, token = await a.gateway.sessions.open("alice-bot", task="cross-replica", via="test")
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as console_b:
            signed_in = await console_b.post(
                "/console/login", data={"token": ADMIN_TOKEN}, headers={"origin": public_url}
            )
            assert signed_in.status_code == 303, signed_in.text
            cookie = console_b.cookies["mcp_console"]
        async with httpx.AsyncClient(base_url=a.url, timeout=10, cookies={"mcp_console": cookie}) as console_a:
            page = await console_a.get("/console/sessions")  # B's sign-in, accepted by A (shared console key)
            assert page.status_code == 200 and session.sid in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None
            async with RawAgent(a, token) as agent:
                assert not (await agent.result())["isError"]
                async with httpx.AsyncClient(base_url=b.url, timeout=10, cookies={"mcp_console": cookie}) as on_b:
                    revoked = await on_b.post(
                        f"/console/sessions/{session.sid}/revoke",
                        data={"csrf": csrf[1]},
                        headers={"origin": public_url},
                    )
                    assert revoked.status_code == 303, revoked.text
                refused = await agent.call()  # on replica A, right after replica B's console answered
                assert refused.status_code == 401, refused.text
        [closed] = [r for r in b.audit("session.closed") if r["session"] == session.sid]
        assert (closed["gateway"], closed["actor"], closed["state"]) == ("replica-b", "console:admin", "revoked")
