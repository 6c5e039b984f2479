"""POST /oauth/token with client_credentials: secrets, private_key_jwt, errors, limits."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from tests.identity.support import basic, call_time, client_credentials, give_secret, token
from tests.support.harness import DEFAULT_AGENTS, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


async def test_client_credentials_token_calls_a_tool_through_the_sdk_and_the_audit_names_the_session(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        body = await client_credentials(gw, "alice-bot", secret, task="report", resource=f"{gw.url}/mcp")
        assert body["token_type"] == "Bearer"
        assert 0 < body["expires_in"] <= 3600
        assert body["scope"] == "time.*"
        assert "issued_token_type" not in body
        sid = body["session_id"]

        result = await call_time(gw, body["access_token"])
        assert not result.is_error

        opened = [r for r in gw.audit("session.opened") if r["session"] == sid]
        issued = [r for r in gw.audit("token.issued") if r["session"] == sid]
        assert opened and issued and opened[0]["via"] == "client_credentials" and opened[0]["task"] == "report"
        calls = [r for r in gw.audit("tool.call") if r.get("session") == sid]
        assert calls and calls[0]["agent"] == "alice-bot" and calls[0]["owner"] == "alice@example.com"
        assert calls[0]["decision"] == "allow"


async def test_client_secret_post_authenticates_like_basic(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        secret = await give_secret(gw, "bob-bot")
        response = await token(
            gw, {"grant_type": "client_credentials", "client_id": "bob-bot", "client_secret": secret}
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Everything a client sees but the clock (`date`)."""
    return response.status_code, [(k, v) for k, v in response.headers.items() if k != "date"], response.content


async def test_unknown_client_wrong_secret_and_disabled_client_get_one_identical_answer_the_audit_tells_them_apart(
    tmp_path,
):
    agents = {**DEFAULT_AGENTS, "off-bot": {"owner": "off@example.com", "disabled": True}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents) as gw:
        secret = await give_secret(gw, "alice-bot")
        off_secret = await give_secret(gw, "off-bot")
        live = await client_credentials(gw, "alice-bot", secret)
        credentials = {  # (client id, secret) -> the reason only the audit may know
            ("alice-bot", secret + "x"): "wrong client secret",
            ("off-bot", off_secret): "client disabled",
            ("ghost-bot", secret): "unknown client",
        }
        async with gw.http() as http:
            for endpoint, form in (
                ("/oauth/token", {"grant_type": "client_credentials"}),
                ("/oauth/revoke", {"token": live["access_token"]}),
            ):
                basics = [
                    _answer(await http.post(endpoint, data=form, headers=basic(client, password)))
                    for client, password in credentials
                ]
                posts = [
                    _answer(await http.post(endpoint, data={**form, "client_id": client, "client_secret": password}))
                    for client, password in credentials
                ]
                assert basics[0] == basics[1] == basics[2], endpoint
                assert posts[0] == posts[1] == posts[2], endpoint
                status, headers, body = basics[0]
                assert status == 401 and dict(headers)["www-authenticate"].startswith("Basic")
                assert json.loads(body) == {
                    "error": "invalid_client",
                    "error_description": "client authentication failed",
                }
                assert posts[0][0] == 401 and "www-authenticate" not in dict(posts[0][1])
        assert set(credentials.values()) <= {r["reason"] for r in gw.audit("auth.failed")}
        assert [r["session"] for r in gw.audit("session.opened")] == [live["session_id"]]
        assert not gw.audit("session.closed"), "a refused revocation ended the session"
        assert not (await call_time(gw, live["access_token"])).is_error


async def test_a_token_request_without_client_credentials_is_refused(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        response = await token(gw, {"grant_type": "client_credentials", "client_id": "alice-bot"})
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"


async def test_malformed_requests_get_the_rfc_6749_error_that_names_the_problem(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        auth = basic("alice-bot", secret)
        async with gw.http() as http:
            cases = [
                (
                    await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=auth),
                    "invalid_request",
                    "x-www-form-urlencoded",
                ),
                (await http.post("/oauth/token", data={"task": "t"}, headers=auth), "invalid_request", "grant_type"),
                (
                    await http.post(
                        "/oauth/token",
                        content="grant_type=client_credentials&grant_type=password",
                        headers={**auth, "content-type": "application/x-www-form-urlencoded"},
                    ),
                    "invalid_request",
                    "more than once",
                ),
                (
                    await http.post("/oauth/token", data={"grant_type": "password"}, headers=auth),
                    "unsupported_grant_type",
                    "password",
                ),
                (
                    await http.post(
                        "/oauth/token",
                        data={"grant_type": "client_credentials", "resource": "https://elsewhere.example/mcp"},
                        headers=auth,
                    ),
                    "invalid_target",
                    "elsewhere",
                ),
                (
                    await http.post(
                        "/oauth/token", data={"grant_type": "client_credentials", "ttl": "soon"}, headers=auth
                    ),
                    "invalid_request",
                    "ttl",
                ),
                (
                    await http.post(
                        "/oauth/token", data={"grant_type": "client_credentials", "client_secret": secret}, headers=auth
                    ),
                    "invalid_request",
                    "one client authentication method",
                ),
            ]
        for response, error, words in cases:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == error
            assert words in response.json()["error_description"]


async def test_every_resource_the_gateway_serves_is_an_accepted_target(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        for resource in (gw.url, gw.mcp_url, gw.server_url("time")):
            await client_credentials(gw, "alice-bot", secret, resource=resource)
        response = await token(
            gw, {"grant_type": "client_credentials", "resource": gw.server_url("nope")}, basic("alice-bot", secret)
        )
        assert response.json()["error"] == "invalid_target"


async def test_a_requested_ttl_is_clamped_to_the_grant(tmp_path):
    agents = {"short-bot": {"owner": "s@example.com", "grant": {"budget": {"session_ttl": "10m"}}}}
    async with running_gateway(tmp_path, manifests=[], agents=agents) as gw:
        secret = await give_secret(gw, "short-bot")
        assert 0 < (await client_credentials(gw, "short-bot", secret, ttl="8h"))["expires_in"] <= 600
        assert 0 < (await client_credentials(gw, "short-bot", secret, ttl="60"))["expires_in"] <= 60


async def test_a_flood_of_token_requests_from_one_source_is_slowed_down(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"oauth_rate_limit": {"per_source": 3}}) as gw:
        statuses = []
        for _ in range(5):
            response = await token(gw, {"grant_type": "client_credentials"}, basic("ghost-bot", "nope"))
            statuses.append(response.status_code)
        assert statuses[:3] == [401, 401, 401]
        assert statuses[3:] == [429, 429]
        assert response.json()["error"] == "slow_down"
        assert int(response.headers["retry-after"]) >= 1


async def test_one_client_is_limited_on_its_own_budget(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"oauth_rate_limit": {"per_client": 2}}) as gw:
        secret = await give_secret(gw, "alice-bot")
        other = await give_secret(gw, "bob-bot")
        await client_credentials(gw, "alice-bot", secret)
        await client_credentials(gw, "alice-bot", secret)
        limited = await token(gw, {"grant_type": "client_credentials"}, basic("alice-bot", secret))
        assert limited.status_code == 429 and limited.json()["error"] == "slow_down"
        await client_credentials(gw, "bob-bot", other)


# ------------------------------------------------------------------ private_key_jwt


def _assertion(key: Ed25519PrivateKey, agent: str, audience: str, **overrides: object) -> str:
    now = int(time.time())
    claims = {
        "iss": agent,
        "sub": agent,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "agent-key-1"})


def _key_agents(key: Ed25519PrivateKey) -> dict[str, object]:
    jwk = {**json.loads(OKPAlgorithm.to_jwk(key.public_key())), "kid": "agent-key-1"}
    return {
        **DEFAULT_AGENTS,
        "keyed-bot": {"owner": "k@example.com", "grant": {"tools": ["time.*"]}, "jwks": {"keys": [jwk]}},
    }


def _jwt_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


async def test_private_key_jwt_authenticates_and_a_replayed_assertion_is_rejected(tmp_path):
    key = Ed25519PrivateKey.generate()
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=_key_agents(key)) as gw:
        assertion = _assertion(key, "keyed-bot", gw.url)
        first = await token(gw, _jwt_form(assertion))
        assert first.status_code == 200, first.text
        assert not (await call_time(gw, first.json()["access_token"])).is_error

        replay = await token(gw, _jwt_form(assertion))
        assert replay.status_code == 401
        assert replay.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
        assert any(r["reason"] == "client assertion replayed" for r in gw.audit("auth.failed"))


async def test_client_assertions_with_the_wrong_audience_key_or_lifetime_are_rejected(tmp_path):
    key = Ed25519PrivateKey.generate()
    async with running_gateway(tmp_path, manifests=[], agents=_key_agents(key)) as gw:
        now = int(time.time())
        bad = {
            "audience is the token endpoint": _assertion(key, "keyed-bot", f"{gw.url}/oauth/token"),
            "signed by another key": _assertion(Ed25519PrivateKey.generate(), "keyed-bot", gw.url),
            "expired": _assertion(key, "keyed-bot", gw.url, exp=now - 10),
            "lives for a day": _assertion(key, "keyed-bot", gw.url, exp=now + 86400),
            "iss is someone else": _assertion(key, "keyed-bot", gw.url, iss="alice-bot"),
            "no jti": _assertion(key, "keyed-bot", gw.url, jti=None),
            "an agent without keys": _assertion(key, "alice-bot", gw.url),
        }
        for case, assertion in bad.items():
            response = await token(gw, _jwt_form(assertion))
            assert response.status_code == 401, case
            assert response.json()["error"] == "invalid_client", case


async def test_a_closed_store_refuses_token_requests_with_503(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        secret = await give_secret(gw, "alice-bot")
        await gw.gateway.store.close()
        try:
            response = await token(gw, {"grant_type": "client_credentials"}, basic("alice-bot", secret))
            assert response.status_code == 503
            assert response.json()["error"] == "temporarily_unavailable"
        finally:
            await gw.gateway.store.open()
