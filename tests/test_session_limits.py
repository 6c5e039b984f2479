"""What one agent can hold on a gateway: per-session upstream children only through its grant, a bounded number
of MCP sessions, and nothing at all once its session has ended, whoever ended it (issue 12, findings 2-4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from gateway.cli import main
from gateway.config.files import GatewayConfig
from gateway.errors import UpstreamError
from gateway.http.edge import TOO_MANY_MCP_SESSIONS
from tests.support.harness import (
    EVERYTHING,
    HEADERS,
    INIT,
    Harness,
    everything_stdio_manifest,
    running_gateway,
    time_manifest,
)

pytestmark = pytest.mark.anyio

AGENTS: dict[str, Any] = {
    "empty-bot": {"owner": "mallory@example.com"},  # an empty grant: nothing on any server
    "peer-bot": {"owner": "peer@example.com", "grant": {"tools": ["everything.echo"]}},
    "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}},
    "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["time.*"]}},
}
LIMITS = {"mcp_sessions_per_session": 3, "mcp_sessions_per_agent": 5}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    manifests = [time_manifest(), everything_stdio_manifest(isolation="per_session")]
    async with running_gateway(
        tmp_path_factory.mktemp("limits"), manifests=manifests, agents=AGENTS, extra={"limits": LIMITS}
    ) as gw:
        yield gw


def everything_children() -> dict[int, psutil.Process]:
    """The server-everything processes this test process runs (the shared one plus one per agent session)."""
    return {
        p.pid: p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and str(EVERYTHING) in " ".join(p.cmdline())
    }


def sdk_sessions(gw: Harness) -> dict[str, Any]:
    """The SDK's own table of handshake-era sessions on /mcp: what its 10,000-session cap counts."""
    app = gw.server.config.loaded_app  # uvicorn's wrapped app; the Starlette app sits inside
    while not hasattr(app, "state"):
        app = app.app
    return dict(app.state.edge.apps["/mcp"].streaming._server_instances)


async def initialize(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/mcp", headers={**HEADERS, "authorization": f"Bearer {token}"}, content=json.dumps(INIT))


async def call_echo(http: httpx.AsyncClient, token: str, mcp_session: str) -> httpx.Response:
    headers = {
        **HEADERS,
        "authorization": f"Bearer {token}",
        "mcp-session-id": mcp_session,
        "mcp-protocol-version": "2025-11-25",
    }
    await http.post(
        "/mcp", headers=headers, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "hi"}},
    }
    return await http.post("/mcp", headers=headers, content=json.dumps(call))


async def test_set_level_starts_no_child_for_an_agent_without_a_grant_and_is_audited_for_a_granted_one(
    gw: Harness,
) -> None:
    before = everything_children()
    empty, peer = await gw.open_session("empty-bot"), await gw.open_session("peer-bot")
    empty_sid, peer_sid = [gw.gateway.tokens.verify(t).sid for t in (empty, peer)]

    async with gw.client(empty, mode="legacy") as client:
        await client.set_logging_level("debug")
    assert everything_children().keys() == before.keys(), "an empty grant started a per-session server"
    assert empty_sid not in gw.gateway.upstreams.session_sids()
    assert [r for r in gw.audit("logging.set_level") if r["session"] == empty_sid] == []
    with pytest.raises(UpstreamError, match="has no grant"):  # nor can any other path start one for it
        gw.gateway.upstreams["everything"].connection_for(await gw.gateway.sessions.resolve(empty))
    assert everything_children().keys() == before.keys()

    async with gw.client(peer, mode="legacy") as client:
        await client.set_logging_level("debug")
        assert len(everything_children().keys() - before.keys()) == 1  # its own child, started by a granted request
    (record,) = [r for r in gw.audit("logging.set_level") if r["session"] == peer_sid]
    assert (record["agent"], record["server"], record["level"], record["decision"]) == (
        "peer-bot",
        "everything",
        "debug",
        "allow",
    )
    await gw.gateway.sessions.end(peer_sid, "closed", "closed")


async def test_one_agent_session_cannot_open_more_mcp_sessions_than_its_limit_and_others_still_can(
    gw: Harness,
) -> None:
    first, second, bob = [await gw.open_session(a) for a in ("alice-bot", "alice-bot", "bob-bot")]
    async with gw.http() as http:
        opened = [await initialize(http, first) for _ in range(3)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        refused = await initialize(http, first)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == TOO_MANY_MCP_SESSIONS
        assert "this agent session holds 3" in error["message"]
        assert "limits.mcp_sessions_per_session = 3" in error["message"]
        assert (await initialize(http, bob)).status_code == 200  # another agent is unaffected
        with pytest.raises(BaseExceptionGroup) as sdk_refused:  # what the SDK's handshake-era client reports
            async with gw.client(first, mode="legacy"):
                pass
        assert sdk_refused.group_contains(MCPError, match=r"limits\.mcp_sessions_per_session = 3")
        async with gw.client(first) as sessionless:  # 2026-07-28 needs no MCP session: unaffected
            assert {t.name for t in (await sessionless.list_tools()).tools} >= {"time__get_current_time"}

        assert [(await initialize(http, second)).status_code for _ in range(3)] == [200, 200, 429]
        per_agent = await initialize(http, second)
        assert "limits.mcp_sessions_per_agent = 5" in per_agent.json()["error"]["message"]

        # A client that ends its MCP session (DELETE) gets the room back.
        ended = await http.delete(
            "/mcp",
            headers={
                "authorization": f"Bearer {first}",
                "mcp-protocol-version": "2025-11-25",
                "mcp-session-id": opened[0].headers["mcp-session-id"],
            },
        )
        assert ended.status_code == 200
        assert (await initialize(http, second)).status_code == 200

        # Ending the agent session terminates its MCP sessions in the SDK, freeing their room there too.
        held = {r.headers["mcp-session-id"] for r in opened[1:]}
        assert held <= sdk_sessions(gw).keys()
        first_sid = gw.gateway.tokens.verify(first).sid
        await gw.gateway.sessions.end(first_sid, "revoked", "revoked", actor="test")
        assert not held & sdk_sessions(gw).keys()
        third = await gw.open_session("alice-bot")
        assert [(await initialize(http, third)).status_code for _ in range(2)] == [200, 200]


async def test_a_session_revoked_from_the_cli_with_no_stream_open_stops_its_children_and_mcp_sessions(
    gw: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await gw.open_session("peer-bot")
    sid = gw.gateway.tokens.verify(token).sid
    before = everything_children()
    async with gw.http() as http:
        opened = await initialize(http, token)
        mcp_session = opened.headers["mcp-session-id"]
        answer = await call_echo(http, token, mcp_session)
        assert answer.status_code == 200 and "Echo: hi" in answer.text
    (child,) = [p for pid, p in everything_children().items() if pid not in before]
    assert mcp_session in sdk_sessions(gw)

    # Another process (the CLI) revokes it; this gateway has no request of that session open.
    config = str(gw.root / "gateway.yaml")
    status = await anyio.to_thread.run_sync(lambda: main(["sessions", "revoke", sid, "--config", config]))
    capsys.readouterr()
    assert status == 0
    gone, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs([child], timeout=15))
    assert gone and not alive, "the per-session server outlived its revoked session"
    assert mcp_session not in sdk_sessions(gw)
    assert sid not in gw.gateway.upstreams.session_sids()


async def test_an_expired_session_stops_its_children_and_terminates_its_mcp_sessions(gw: Harness) -> None:
    token = await gw.open_session("peer-bot")
    before = everything_children()
    async with gw.http() as http:
        mcp_session = (await initialize(http, token)).headers["mcp-session-id"]
        assert (await call_echo(http, token, mcp_session)).status_code == 200
    (child,) = [p for pid, p in everything_children().items() if pid not in before]

    gw.clock.advance(24 * 3600)  # past every lifetime: the gateway's own sweep expires it (the last test here)
    gone, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs([child], timeout=15))
    assert gone and not alive
    assert mcp_session not in sdk_sessions(gw)


@settings(deadline=None)
@given(per_session=st.integers(-3, 10_000), per_agent=st.integers(-3, 10_000))
def test_mcp_session_limits_accept_positive_counts_and_refuse_the_rest(per_session: int, per_agent: int) -> None:
    raw = {
        "public_url": "http://127.0.0.1:1",
        "limits": {"mcp_sessions_per_session": per_session, "mcp_sessions_per_agent": per_agent},
    }
    if per_session > 0 and per_agent > 0:
        limits = GatewayConfig.model_validate(raw).limits
        assert (limits.mcp_sessions_per_session, limits.mcp_sessions_per_agent) == (per_session, per_agent)
    else:
        with pytest.raises(ValueError, match="greater than 0"):
            GatewayConfig.model_validate(raw)


def test_mcp_session_limits_default_to_16_per_session_and_64_per_agent() -> None:
    limits = GatewayConfig.model_validate({"public_url": "http://127.0.0.1:1"}).limits
    assert (limits.mcp_sessions_per_session, limits.mcp_sessions_per_agent) == (16, 64)
