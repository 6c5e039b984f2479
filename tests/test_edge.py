"""The HTTP edge: who may talk to the MCP endpoints, and what everyone else hears."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import HEADERS, INIT, Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path_factory.mktemp("edge"), manifests=[time_manifest()]) as gw:
        yield gw


def forge(gw: Harness, **changes: object) -> str:
    """A token signed with the gateway's real key, with some claims changed."""
    now = int(time.time())
    claims = {
        "iss": gw.url,
        "aud": gw.url,
        "client_id": "alice-bot",
        "sub": "alice-bot",
        "sid": "s-x",
        "iat": now,
        "exp": now + 300,
        "jti": "j",
    }
    claims.update(changes)
    kid, key = gw.gateway.keys.sign_key()
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None},
        key,
        algorithm="EdDSA",
        headers={"kid": kid, "typ": "at+jwt"},
    )


async def assert_401(gw: Harness, token: str | None, path: str = "/mcp") -> None:
    headers = dict(HEADERS)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with gw.http() as http:
        response = await http.post(path, headers=headers, content=json.dumps(INIT))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource{path}"' in challenge


async def test_requests_without_a_valid_token_get_401_with_the_metadata_challenge(gw: Harness) -> None:
    live = await gw.open_session("alice-bot")
    sid = gw.gateway.tokens.verify(live).sid
    await assert_401(gw, None)
    await assert_401(gw, None, "/servers/time/mcp")
    await assert_401(gw, "not-a-jwt")
    await assert_401(gw, live[:-4] + "AAAA")  # signature broken
    await assert_401(gw, forge(gw, sid=sid, exp=int(time.time()) - 1))  # expired
    await assert_401(gw, forge(gw, sid=sid, aud="http://evil.example"))  # wrong audience
    await assert_401(gw, forge(gw, sid=sid, iss="http://evil.example"))  # wrong issuer
    await assert_401(gw, forge(gw, sid=None))  # no sid
    await assert_401(gw, forge(gw, sid="s-unknown"))  # no such session


async def test_the_gateway_serves_protected_resource_metadata_for_each_endpoint(gw: Harness) -> None:
    async with gw.http() as http:
        for path in ("/mcp", "/servers/time/mcp", ""):
            document = (await http.get(f"/.well-known/oauth-protected-resource{path}")).json()
            assert document["resource"] == f"{gw.url}{path}"
            assert document["authorization_servers"] == [gw.url]
        assert (await http.get("/.well-known/oauth-protected-resource/servers/nope/mcp")).status_code == 404
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
        jwks = (await http.get(metadata["jwks_uri"].removeprefix(gw.url))).json()
        assert jwks["keys"][0]["kid"] == gw.gateway.keys.active_kid


async def test_a_foreign_origin_is_refused_before_anything_else(gw: Harness) -> None:
    token = await gw.open_session("alice-bot")
    async with gw.http() as http:
        evil = await http.post(
            "/mcp",
            headers={**HEADERS, "origin": "http://evil.example", "authorization": f"Bearer {token}"},
            content=json.dumps(INIT),
        )
        assert evil.status_code == 403
        assert evil.json()["error_description"] == "Origin not allowed"
        unauthenticated = await http.post(
            "/mcp", headers={**HEADERS, "origin": "http://evil.example"}, content=json.dumps(INIT)
        )
        assert unauthenticated.status_code == 403
        rebinding = await http.post(
            "/mcp",
            headers={**HEADERS, "host": "evil.example:80", "authorization": f"Bearer {token}"},
            content=json.dumps(INIT),
        )
        assert rebinding.status_code == 421
        own = await http.post(
            "/mcp", headers={**HEADERS, "origin": gw.url, "authorization": f"Bearer {token}"}, content=json.dumps(INIT)
        )
        assert own.status_code == 200


async def test_malformed_and_oversized_bodies_get_protocol_errors_and_the_gateway_keeps_serving(gw: Harness) -> None:
    token = await gw.open_session("alice-bot")
    headers = {**HEADERS, "authorization": f"Bearer {token}", "mcp-protocol-version": "2026-07-28"}
    async with gw.http() as http:
        garbage = await http.post("/mcp", headers=headers, content=b"{not json")
        assert garbage.status_code in (400, 200) and garbage.json()["error"]["code"] == -32700
        batch = await http.post("/mcp", headers=headers, content=b"[1, 2]")
        assert batch.json()["error"]["code"] == -32600
        huge = await http.post("/mcp", headers=headers, content=b"{" + b" " * (5 * 1024 * 1024) + b"}")
        assert huge.status_code == 413
    async with gw.client(token) as client:
        result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not result.is_error


async def test_an_mcp_session_cannot_be_borrowed_by_another_agent_session(gw: Harness) -> None:
    first, second = await gw.open_session("alice-bot"), await gw.open_session("alice-bot")
    async with gw.http() as http:
        opened = await http.post(
            "/mcp", headers={**HEADERS, "authorization": f"Bearer {first}"}, content=json.dumps(INIT)
        )
        mcp_session = opened.headers["mcp-session-id"]
        borrowed = await http.post(
            "/mcp",
            headers={
                **HEADERS,
                "authorization": f"Bearer {second}",
                "mcp-session-id": mcp_session,
                "mcp-protocol-version": "2025-11-25",
            },
            content=json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )
    assert borrowed.status_code == 404
    assert borrowed.json()["error"] == {"code": -32600, "message": "Session not found"}


async def test_every_tool_call_leaves_exactly_one_tool_call_record_with_the_identity_triple(gw: Harness) -> None:
    token = await gw.open_session("alice-bot", task="triple")
    sid = gw.gateway.tokens.verify(token).sid
    async with gw.client(token) as client:
        for tz in ("UTC", "Europe/Paris", "Asia/Tokyo"):
            await client.call_tool("time__get_current_time", {"timezone": tz})
        with pytest.raises(MCPError, match="^Unknown tool: time__nope$"):
            await client.call_tool("time__nope", {})
    calls = [r for r in gw.audit("tool.call") if r["session"] == sid]
    assert len(calls) == 4
    for record in calls:
        assert record["agent"] == "alice-bot" and record["owner"] == "alice@example.com"
        assert record["session"] == sid and record["task"] == "triple"
    assert [r["decision"] for r in calls] == ["allow", "allow", "allow", "deny"]
    results = [r for r in gw.audit("tool.result") if r["session"] == sid]
    assert sorted(r["call_id"] for r in results) == sorted(r["call_id"] for r in calls[:3])
