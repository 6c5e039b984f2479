"""A session is a task: it ends by close, revocation, expiry or idle timeout, and the next request fails."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import anyio
import httpx
import jwt
import pytest

from gateway.cli import main
from gateway.operations import Operations
from tests.identity.support import (
    basic,
    call_time,
    client_credentials,
    give_secret,
    legacy_session,
    mcp_status,
    read_stream,
    token,
)
from tests.support.harness import DEFAULT_AGENTS, Harness, everything_stdio_manifest, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


async def cli(gw: Harness, *argv: str) -> str:
    """Run an operator command the way a shell would (its own event loop, its own store connection)."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main([*argv, "--config", str(gw.root / "gateway.yaml")])

    assert await anyio.to_thread.run_sync(run) == 0
    return out.getvalue()


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert "resource_metadata=" in response.headers["www-authenticate"]


def _closed(gw: Harness, sid: str) -> dict[str, Any]:
    return next(r for r in gw.audit("session.closed") if r["session"] == sid)


async def test_revoking_a_token_refuses_the_very_next_request(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        body = await client_credentials(gw, "alice-bot", secret)
        assert not (await call_time(gw, body["access_token"])).is_error
        async with gw.http() as http:
            revoked = await http.post("/oauth/revoke", data={"token": body["access_token"]},
                                      headers=basic("alice-bot", secret))
        assert revoked.status_code == 200
        _refused(await mcp_status(gw, body["access_token"]))
        assert _closed(gw, body["session_id"])["reason"] == "closed"


async def test_revocation_endpoint_rules_of_rfc_7009(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        alice, bob = await give_secret(gw, "alice-bot"), await give_secret(gw, "bob-bot")
        alice_token = (await client_credentials(gw, "alice-bot", alice))["access_token"]
        bob_token = (await client_credentials(gw, "bob-bot", bob))["access_token"]
        async with gw.http() as http:
            unknown = await http.post("/oauth/revoke", data={"token": "garbage"}, headers=basic("alice-bot", alice))
            assert unknown.status_code == 200
            wrong_secret = await http.post("/oauth/revoke", data={"token": alice_token},
                                           headers=basic("alice-bot", "nope"))
            assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
            others = await http.post("/oauth/revoke", data={"token": bob_token}, headers=basic("alice-bot", alice))
            assert others.status_code == 400 and others.json()["error"] == "unauthorized_client"
            assert (await mcp_status(gw, bob_token)).status_code == 200
            own = await http.post("/oauth/revoke", data={"token": bob_token})  # the holder of a token may end it
            assert own.status_code == 200
        _refused(await mcp_status(gw, bob_token))
        assert (await mcp_status(gw, alice_token)).status_code == 200


async def test_operator_close_and_revoke_from_the_cli_refuse_the_next_request(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        first, second, third = [await gw.gateway.sessions.open("alice-bot", via="test") for _ in range(3)]
        await cli(gw, "sessions", "close", first[0].sid)
        _refused(await mcp_status(gw, first[1]))
        await cli(gw, "sessions", "revoke", second[0].sid)
        _refused(await mcp_status(gw, second[1]))
        assert (await mcp_status(gw, third[1])).status_code == 200
        assert "revoked 1 session(s)" in await cli(gw, "sessions", "revoke", "--agent", "alice-bot")
        _refused(await mcp_status(gw, third[1]))
        cli_audit = gw.gateway.config.audit.path.with_name("audit-cli.jsonl").read_text()
        assert '"reason":"closed"' in cli_audit and '"reason":"revoked"' in cli_audit


async def test_expiry_and_idle_timeout_follow_the_clock(tmp_path):
    agents = {"idle-bot": {"owner": "i@example.com", "grant": {"budget": {"idle_timeout": "10m",
                                                                            "session_ttl": "1h"}}}}
    async with running_gateway(tmp_path, manifests=[], agents=agents) as gw:
        _, short = await gw.gateway.sessions.open("idle-bot", ttl=120, via="test")
        idle_sid, idle = await gw.gateway.sessions.open("idle-bot", via="test")
        for _ in range(3):  # activity keeps a session alive past its idle timeout
            gw.clock.advance(9 * 60)
            assert (await mcp_status(gw, idle)).status_code == 200
        _refused(await mcp_status(gw, short))  # 27 minutes > its 2-minute lifetime
        gw.clock.advance(11 * 60)
        _refused(await mcp_status(gw, idle))
        assert _closed(gw, idle_sid.sid)["reason"] == "expired"


async def test_disabling_an_agent_ends_its_sessions_and_open_streams_and_stops_new_tokens(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        secret = await give_secret(gw, "alice-bot")
        tokens = [(await client_credentials(gw, "alice-bot", secret))["access_token"] for _ in range(2)]
        async with legacy_session(gw, tokens[0]) as (http, headers):
            async with http.stream("GET", "/mcp", headers={**headers, "accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                with anyio.fail_after(5):  # the gateway notices a change made by another process
                    async with anyio.create_task_group() as tg:  # exits once the stream has ended
                        tg.start_soon(read_stream, stream, [], anyio.Event())
                        await cli(gw, "agents", "disable", "alice-bot")
        for access_token in tokens:
            _refused(await mcp_status(gw, access_token))
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("alice-bot", secret))
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        await cli(gw, "agents", "enable", "alice-bot")
        await client_credentials(gw, "alice-bot", secret)


async def test_ending_a_session_ends_its_in_flight_sse_response(tmp_path):
    agents = {**DEFAULT_AGENTS, "long-bot": {"owner": "l@example.com", "grant": {"tools": ["everything.*"]}}}
    async with running_gateway(tmp_path, manifests=[everything_stdio_manifest()], agents=agents) as gw:
        session, access_token = await gw.gateway.sessions.open("long-bot", via="test")
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "everything__trigger-long-running-operation", "arguments": {"duration": 30, "steps": 30},
            "_meta": {"progressToken": "p1"}}}
        async with legacy_session(gw, access_token) as (http, headers):
            async with http.stream("POST", "/mcp", json=call, headers=headers) as response:
                lines: list[str] = []
                progressed = anyio.Event()
                with anyio.fail_after(15):
                    async with anyio.create_task_group() as tg:  # exits once the response has ended
                        tg.start_soon(read_stream, response, lines, progressed)
                        await progressed.wait()
                        await Operations(gw.gateway, "test").end_session(session.sid, "revoked")
        assert lines and all('"result"' not in line for line in lines)
