"""The official Python SDK's OAuthClientProvider signs in through the gateway end to end: the real IdP, real
Chromium, a Client ID Metadata Document served over HTTPS; then tools, the audit identity triple, refresh."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.login.support import Landing, authorize_in_browser, browser, sign_in_world

pytestmark = pytest.mark.anyio


class Memory:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def provider_for(
    world: Any,
    chromium: Any,
    storage: Memory,
    client_id: str,
    landings: list[Landing],
) -> OAuthClientProvider:
    async def redirect_handler(url: str) -> None:
        landings.append(await authorize_in_browser(chromium, url, world.callbacks))

    async def callback_handler() -> AuthorizationCodeResult:
        params = landings[-1].params
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    metadata = OAuthClientMetadata(
        redirect_uris=[world.redirect_uri],
        client_name="Test IDE",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    return OAuthClientProvider(
        world.gw.mcp_url, metadata, storage, redirect_handler, callback_handler, client_metadata_url=client_id
    )


async def test_the_python_sdk_signs_in_with_a_metadata_document_and_calls_tools_as_the_humans_own_agent(tmp_path):
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        storage, landings = Memory(), []
        http = create_mcp_http_client(auth=provider_for(world, chromium, storage, client_id, landings))
        async with http, Client(streamable_http_client(world.gw.mcp_url, http_client=http)) as client:
            tools = await client.list_tools()
            assert sorted(t.name for t in tools.tools) == ["time__convert_time", "time__get_current_time"]
            result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error
        assert len(landings) == 1 and landings[0].params["iss"] == world.gw.url  # RFC 9207
        agent = "ide:alice@example.com:127.0.0.1"
        call = world.gw.audit("tool.call")[-1]
        assert (call["agent"], call["on_behalf_of"]) == (agent, "alice@example.com")
        sid = call["session"]
        opened = world.gw.audit("session.opened")[-1]
        assert (opened["session"], opened["via"]) == (sid, "authorization_code")
        assert [r["event"] for r in world.gw.audit() if r["event"].startswith(("login.", "consent."))] == [
            "login.started",
            "consent.granted",
            "login.completed",
        ]
        fetched = world.gw.audit("client.metadata_fetched")
        assert fetched and fetched[0]["client_id"] == client_id
        record = await world.gw.gateway.store.get_agent(agent)
        assert record is not None and (record.owner, record.source) == ("alice@example.com", "interactive")

        # The token: short, delegated, bound to the sign-in's session.
        claims = world.gw.gateway.tokens.verify(storage.tokens.access_token).raw
        assert (claims["sub"], claims["act"], claims["credential"]) == (
            "alice@example.com",
            {"sub": agent},
            "interactive",
        )
        assert claims["exp"] - claims["iat"] <= 900

        # Refresh: a new access token and a new refresh token, same session.
        first = storage.tokens.refresh_token
        async with httpx.AsyncClient(base_url=world.gw.url) as plain:
            answer = await plain.post(
                "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": client_id}
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["session_id"] == sid and body["refresh_token"] != first
            assert world.gw.audit("token.refreshed")[-1]["session"] == sid
            # Rotation holds: the used token again is reuse, and it revokes the session.
            reused = await plain.post(
                "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": client_id}
            )
            assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
            assert world.gw.audit("refresh.reused")[-1]["session"] == sid
            session = await world.gw.gateway.store.get_session(sid)
            assert session is not None and session.state == "revoked"
            after = await plain.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id},
            )
            assert after.status_code == 400
            denied = await plain.post("/mcp", headers={"authorization": f"Bearer {body['access_token']}"}, json={})
            assert denied.status_code == 401
