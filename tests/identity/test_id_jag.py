"""Enterprise-managed authorization: an ID-JAG from the company IdP lets an agent act for a person."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from tests.identity.support import DpopKey, IdP, basic, give_secret, identity_provider, token
from tests.support.harness import Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AGENTS = {
    "helper-bot": {"owner": "owner@example.com", "delegators": ["*@example.com"], "grant": {"tools": ["time.*"]}},
    "other-bot": {"owner": "owner@example.com", "delegators": ["*@example.com"], "grant": {"tools": ["time.*"]}},
}


def _id_jag(idp: IdP, gw: Harness, **overrides: Any) -> str:
    """What the IdP's token exchange hands the agent (draft-ietf-oauth-identity-assertion-authz-grant §3)."""
    now = int(time.time())
    claims = {
        "aud": gw.url,
        "client_id": "helper-bot",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "scope": "time.get_current_time",
        "resource": gw.mcp_url,
    }
    header = {"typ": overrides.pop("typ", "oauth-id-jag+jwt")}
    return idp.sign({**claims, **overrides}, header=header)


async def _grant(gw: Harness, secret: str, assertion: str, agent: str = "helper-bot", **headers: str):
    return await token(gw, {"grant_type": JWT_BEARER, "assertion": assertion}, {**basic(agent, secret), **headers})


async def test_an_id_jag_opens_a_delegated_session_whose_records_carry_the_human_and_the_agent(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config(id_jag=True)]}
        async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            key = DpopKey()
            response = await _grant(gw, secret, _id_jag(idp, gw), DPoP=key.proof("POST", f"{gw.url}/oauth/token"))
            assert response.status_code == 200, response.text
            body = response.json()
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["sub"] == "carol@example.com" and claims["act"] == {"sub": "helper-bot"}
            assert claims["cnf"] == {"jkt": key.thumbprint} and body["token_type"] == "DPoP"
            issued = next(r for r in gw.audit("token.issued") if r["session"] == body["session_id"])
            assert issued["credential"] == "id_jag" and issued["on_behalf_of"] == "carol@example.com"
            assert issued["dpop_jkt"] == key.thumbprint

            unbound = (await _grant(gw, secret, _id_jag(idp, gw))).json()  # without a proof: a Bearer token
            async with gw.client(unbound["access_token"]) as client:  # 2026-07-28: server/discover
                assert client.server_capabilities.extensions == {
                    "io.modelcontextprotocol/enterprise-managed-authorization": {}
                }
                assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            async with gw.client(unbound["access_token"], mode="legacy") as client:  # the handshake era still works
                assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            call = next(r for r in gw.audit("tool.call") if r.get("session") == unbound["session_id"])
            assert call["agent"] == "helper-bot" and call["on_behalf_of"] == "carol@example.com"


async def test_bad_id_jags_are_refused_with_invalid_grant(tmp_path):
    async with identity_provider() as idp, identity_provider(issuer="https://sso.other.example/") as plain:
        extra = {"identity_providers": [idp.config(id_jag=True), plain.config()]}
        agents = {
            **AGENTS,
            "picky-bot": {
                "owner": "owner@example.com",
                "delegators": ["dave@example.com"],
                "grant": {"tools": ["time.*"]},
            },
        }
        async with running_gateway(tmp_path, manifests=[], agents=agents, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            picky = await give_secret(gw, "picky-bot")
            replayed = _id_jag(idp, gw)
            assert (await _grant(gw, secret, replayed)).status_code == 200
            cases = {
                "wrong typ": (_id_jag(idp, gw, typ="JWT"), "assertion typ must be oauth-id-jag+jwt"),
                "no typ": (_id_jag(idp, gw, typ=None), "assertion typ must be oauth-id-jag+jwt"),
                "wrong aud": (_id_jag(idp, gw, aud=idp.audience), "JWT audience not accepted"),
                "aud with another party too": (
                    _id_jag(idp, gw, aud=[gw.url, "https://other.example"]),
                    "ID-JAG audience must be exactly this gateway",
                ),
                "another client": (
                    _id_jag(idp, gw, client_id="other-bot"),
                    "ID-JAG client_id is not the authenticated client",
                ),
                "IdP without id_jag": (
                    _id_jag(plain, gw),
                    "this identity provider may not issue ID-JAGs (id_jag: true)",
                ),
                "human outside delegators": (
                    _id_jag(idp, gw, email="mallory@evil.example"),
                    "this person may not delegate to this agent (delegators)",
                ),
                "another resource": (
                    _id_jag(idp, gw, resource="https://elsewhere.example/mcp"),
                    "ID-JAG resource is not served by this gateway",
                ),
                "a resource that is no URL": (
                    _id_jag(idp, gw, resource=7),
                    "ID-JAG resource is not served by this gateway",
                ),
                "no jti": (_id_jag(idp, gw, jti=None), "JWT lacks the jti claim"),
                "expired": (_id_jag(idp, gw, exp=int(time.time()) - 5), "JWT expired"),
                "replayed": (replayed, "ID-JAG replayed (jti already used)"),
            }
            for case, (assertion, reason) in cases.items():
                response = await _grant(gw, secret, assertion)
                assert response.status_code == 400, case
                assert response.json() == {"error": "invalid_grant", "error_description": reason}, case
            outside = await _grant(gw, picky, _id_jag(idp, gw, client_id="picky-bot"), agent="picky-bot")
            assert outside.json()["error_description"] == "this person may not delegate to this agent (delegators)"
            assert {reason for _, reason in cases.values()} <= {r["reason"] for r in gw.audit("auth.failed")}
            assert len(gw.audit("session.opened")) == 1


async def test_an_id_jag_needs_the_agent_to_authenticate_as_the_client(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config(id_jag=True)]}
        async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
            response = await token(gw, {"grant_type": JWT_BEARER, "assertion": _id_jag(idp, gw)})
            assert response.status_code == 400  # without a client it is read as a workload JWT, and refused
            assert response.json()["error"] == "invalid_grant"
            assert not gw.audit("session.opened")
