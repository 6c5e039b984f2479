"""A session is a task: it ends by close, revocation, expiry or idle timeout, and the next request fails."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import jwt
import pytest

from tests.identity.support import (
    basic,
    call_time,
    cli,
    client_credentials,
    give_secret,
    legacy_session,
    mcp_status,
    read_stream,
    token,
)
from tests.support.harness import DEFAULT_AGENTS, Harness, everything_stdio_manifest, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


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
            revoked = await http.post(
                "/oauth/revoke", data={"token": body["access_token"]}, headers=basic("alice-bot", secret)
            )
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
            wrong_secret = await http.post(
                "/oauth/revoke", data={"token": alice_token}, headers=basic("alice-bot", "nope")
            )
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
    agents = {"idle-bot": {"owner": "i@example.com", "grant": {"budget": {"idle_timeout": "10m", "session_ttl": "1h"}}}}
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
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "everything__trigger-long-running-operation",
                "arguments": {"duration": 30, "steps": 30},
                "_meta": {"progressToken": "p1"},
            },
        }
        async with legacy_session(gw, access_token) as (http, headers):
            async with http.stream("POST", "/mcp", json=call, headers=headers) as response:
                lines: list[str] = []
                progressed = anyio.Event()
                with anyio.fail_after(15):
                    async with anyio.create_task_group() as tg:  # exits once the response has ended
                        tg.start_soon(read_stream, response, lines, progressed)
                        await progressed.wait()
                        await gw.gateway.operations("test").end_session(session.sid, "revoked")
        assert lines and all('"result"' not in line for line in lines)


async def test_a_restart_on_the_same_state_keeps_live_sessions_and_revocations(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        port = gw.port
        _, live = await gw.gateway.sessions.open("alice-bot", via="test")
        revoked_session, revoked = await gw.gateway.sessions.open("alice-bot", via="test")
        await gw.gateway.operations("test").end_session(revoked_session.sid, "revoked")
    async with running_gateway(tmp_path, manifests=[], port=port) as gw:
        assert (await mcp_status(gw, live)).status_code == 200
        _refused(await mcp_status(gw, revoked))


async def test_renewal_keeps_the_session_id_and_its_budget(tmp_path):
    agents = {
        **DEFAULT_AGENTS,
        "budget-bot": {
            "owner": "b@example.com",
            "grant": {"tools": ["time.*"], "budget": {"session_calls": 10, "session_ttl": "1h"}},
        },
    }
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents) as gw:
        secret = await give_secret(gw, "budget-bot")
        first = await client_credentials(gw, "budget-bot", secret, ttl="5m", task="renew me")
        assert not (await call_time(gw, first["access_token"])).is_error
        gw.clock.advance(4 * 60)
        renewed = await client_credentials(gw, "budget-bot", secret, session_id=first["session_id"], ttl="5m")
        assert renewed["session_id"] == first["session_id"]
        gw.clock.advance(2 * 60)  # past the first token's expiry, inside the renewed one
        _refused(await mcp_status(gw, first["access_token"]))
        assert not (await call_time(gw, renewed["access_token"])).is_error
        session = await gw.gateway.store.get_session(first["session_id"])
        assert session is not None and session.calls == 2 and session.calls_limit == 10
        assert session.task == "renew me"

        other = await give_secret(gw, "bob-bot")
        stolen = await token(
            gw, {"grant_type": "client_credentials", "session_id": first["session_id"]}, basic("bob-bot", other)
        )
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        gw.clock.advance(3600)
        late = await token(
            gw, {"grant_type": "client_credentials", "session_id": first["session_id"]}, basic("budget-bot", secret)
        )
        assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


async def test_max_active_sessions_refuses_one_session_too_many(tmp_path):
    agents = {"capped-bot": {"owner": "c@example.com", "grant": {"budget": {"max_active_sessions": 2}}}}
    async with running_gateway(tmp_path, manifests=[], agents=agents) as gw:
        secret = await give_secret(gw, "capped-bot")
        first = await client_credentials(gw, "capped-bot", secret)
        await client_credentials(gw, "capped-bot", secret)
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("capped-bot", secret))
        assert refused.status_code == 400
        assert refused.json()["error"] == "access_denied"
        assert "max_active_sessions" in refused.json()["error_description"]
        async with gw.http() as http:
            await http.post("/oauth/revoke", data={"token": first["access_token"]})
        await client_credentials(gw, "capped-bot", secret)  # closing one makes room


async def test_keys_rotate_leaves_live_tokens_working_and_new_tokens_use_the_new_key(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        _, before = await gw.gateway.sessions.open("alice-bot", via="test")
        old_kid = jwt.get_unverified_header(before)["kid"]
        assert "signing with" in await cli(gw, "keys", "rotate")
        gw.gateway.keys.refresh(force=True)  # the gateway would notice within a second by itself
        _, after = await gw.gateway.sessions.open("alice-bot", via="test")
        assert jwt.get_unverified_header(after)["kid"] != old_kid
        assert (await mcp_status(gw, before)).status_code == 200
        assert (await mcp_status(gw, after)).status_code == 200
        async with gw.http() as http:
            kids = {k["kid"] for k in (await http.get("/jwks.json")).json()["keys"]}
        assert old_kid in kids and len(kids) == 2


async def test_a_closed_store_refuses_mcp_requests_with_503_and_forwards_nothing(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        _, access_token = await gw.gateway.sessions.open("alice-bot", via="test")
        await gw.gateway.store.close()
        try:
            response = await mcp_status(gw, access_token)
            assert response.status_code == 503
        finally:
            await gw.gateway.store.open()
        assert (await mcp_status(gw, access_token)).status_code == 200
