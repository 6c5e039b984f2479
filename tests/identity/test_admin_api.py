"""The admin API mirrors the agents and sessions CLI behind the admin token; introspection too."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.identity.support import basic, client_credentials, mcp_status, token
from tests.support.harness import running_gateway

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_admin_api_manages_agents_and_sessions_and_audits_each_action_as_admin(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            created = await http.post(
                "/admin/agents", json={"id": "new-bot", "owner": "n@example.com", "cost_center": "lab"}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
            secret = created.json()["client_secret"]
            body = await client_credentials(gw, "new-bot", secret)

            listed = (await http.get("/admin/agents", headers=ADMIN)).json()["agents"]
            assert {"id": "new-bot", "source": "store", "disabled": False}.items() <= next(
                a for a in listed if a["id"] == "new-bot"
            ).items()
            sessions = (await http.get("/admin/sessions", params={"agent": "new-bot"}, headers=ADMIN)).json()
            assert [s["sid"] for s in sessions["sessions"]] == [body["session_id"]]

            rotated = await http.post("/admin/agents/new-bot/rotate", headers=ADMIN)
            new_secret = rotated.json()["client_secret"]
            old = await token(gw, {"grant_type": "client_credentials"}, basic("new-bot", secret))
            assert old.status_code == 401
            second = await client_credentials(gw, "new-bot", new_secret)

            closed = await http.post(f"/admin/sessions/{body['session_id']}/close", headers=ADMIN)
            assert closed.status_code == 200
            again = await http.post(f"/admin/sessions/{body['session_id']}/close", headers=ADMIN)
            assert again.status_code == 409
            assert (await mcp_status(gw, body["access_token"])).status_code == 401

            disabled = await http.post("/admin/agents/new-bot/disable", headers=ADMIN)
            assert disabled.json()["revoked"] == [second["session_id"]]
            assert (await mcp_status(gw, second["access_token"])).status_code == 401
            assert (await http.post("/admin/agents/new-bot/enable", headers=ADMIN)).status_code == 200

            assert (await http.post("/admin/agents/ghost/disable", headers=ADMIN)).status_code == 404
            duplicate = await http.post(
                "/admin/agents", json={"id": "alice-bot", "owner": "x@example.com"}, headers=ADMIN
            )
            assert duplicate.status_code == 409 and "agents.yaml" in duplicate.json()["error"]
            bad = await http.post("/admin/agents", json={"id": "x y", "owner": "x@example.com"}, headers=ADMIN)
            assert bad.status_code == 400

        actions = {r["event"] for r in gw.audit() if r.get("actor") == "admin"}
        assert {"agent.created", "agent.secret_rotated", "agent.disabled", "agent.enabled", "session.closed"} <= actions


async def test_admin_api_refuses_an_owner_that_is_not_one_email_address(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            for owner in ("@a@b", "a@b@c", "a@b\n", "a\t@b"):
                refused = await http.post("/admin/agents", json={"id": "odd-bot", "owner": owner}, headers=ADMIN)
                assert refused.status_code == 400, owner
                assert "email" in refused.json()["error"], owner


async def test_admin_api_refuses_keys_client_authentication_cannot_verify(tmp_path):
    es384 = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            refused = await http.post(
                "/admin/agents",
                json={"id": "es-bot", "owner": "e@example.com", "jwks": {"keys": [es384]}},
                headers=ADMIN,
            )
            assert refused.status_code == 400
            assert "ES384" in refused.json()["error"]
            listed = (await http.get("/admin/agents", headers=ADMIN)).json()["agents"]
            assert "es-bot" not in {a["id"] for a in listed}


async def test_admin_api_revokes_all_sessions_of_an_agent_and_resumes_one(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        one, _ = await gw.gateway.sessions.open("alice-bot", via="test")
        two, two_token = await gw.gateway.sessions.open("alice-bot", via="test")
        async with gw.http() as http:
            resumed = await http.post(f"/admin/sessions/{one.sid}/resume", json={"add_calls": 5}, headers=ADMIN)
            assert resumed.status_code == 200
            revoked = await http.post(f"/admin/sessions/{two.sid}/revoke", headers=ADMIN)
            assert revoked.status_code == 200
            assert (await mcp_status(gw, two_token)).status_code == 401
            everything = await http.post("/admin/agents/alice-bot/revoke-sessions", headers=ADMIN)
            assert everything.json()["revoked"] == [one.sid]
            states = (await http.get("/admin/sessions", params={"state": "revoked"}, headers=ADMIN)).json()
            assert {s["sid"] for s in states["sessions"]} == {one.sid, two.sid}


async def test_admin_api_and_introspection_refuse_without_the_admin_token(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, basic("admin", ADMIN_TOKEN)):
                response = await http.get("/admin/agents", headers=headers)
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")
                introspect = await http.post("/oauth/introspect", data={"token": "x"}, headers=headers)
                assert introspect.status_code == 401
        assert any(r["reason"] == "admin token missing or wrong" for r in gw.audit("auth.failed"))


async def test_without_an_admin_token_configured_the_admin_api_refuses_everything(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        async with gw.http() as http:
            assert (await http.get("/admin/agents", headers={"Authorization": "Bearer x"})).status_code == 401
            assert (await http.get("/admin/agents", headers={"Authorization": "Bearer None"})).status_code == 401


async def test_introspection_describes_live_tokens_and_calls_ended_ones_inactive(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        session, live = await gw.gateway.sessions.open(
            "alice-bot", on_behalf_of="carol@example.com", task="t1", via="test"
        )
        async with gw.http() as http:
            described = (await http.post("/oauth/introspect", data={"token": live}, headers=ADMIN)).json()
            assert described["active"] is True
            assert described["sub"] == "carol@example.com" and described["act"] == {"sub": "alice-bot"}
            assert described["client_id"] == "alice-bot" and described["sid"] == session.sid
            assert described["token_type"] == "Bearer" and described["task"] == "t1"
            await gw.gateway.sessions.end(session.sid, "revoked", "revoked")
            ended = (await http.post("/oauth/introspect", data={"token": live}, headers=ADMIN)).json()
            assert ended == {"active": False}
            garbage = (await http.post("/oauth/introspect", data={"token": "x.y.z"}, headers=ADMIN)).json()
            assert garbage == {"active": False}


async def test_metadata_documents_describe_what_the_gateway_implements(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        async with gw.http() as http:
            meta = (await http.get("/.well-known/oauth-authorization-server")).json()
            assert meta["issuer"] == gw.url
            for endpoint in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
                assert (await http.post(meta[endpoint].removeprefix(gw.url), data={"x": "1"})).status_code in (400, 401)
            keys = (await http.get(meta["jwks_uri"].removeprefix(gw.url))).json()["keys"]
            assert keys and all(k["alg"] == "EdDSA" for k in keys)
            resource = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
            assert resource["resource"] == f"{gw.url}/mcp"
            assert resource["authorization_servers"] == [gw.url]


async def test_the_admin_api_creates_an_agent_with_its_own_lifecycle_and_refuses_a_bad_one_naming_the_field(tmp_path):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            bad = await http.post(
                "/admin/agents",
                json={"id": "tmp-bot", "owner": "t@example.com", "disable_after_idle": "soon"},
                headers=ADMIN,
            )
            assert bad.status_code == 400 and bad.json()["error"].startswith("disable_after_idle: "), bad.text
            created = await http.post(
                "/admin/agents",
                json={"id": "tmp-bot", "owner": "t@example.com", "expires": "2030-06-01", "credential_max_age": "90d"},
                headers=ADMIN,
            )
            assert created.status_code == 201, created.text
            shown = (await http.get("/admin/agents/tmp-bot", headers=ADMIN)).json()
            assert shown["lifecycle"]["expires"] == "2030-06-01T00:00:00Z"
            assert shown["lifecycle"]["credential_max_age"] == 90 * 86400.0
            assert shown["lifecycle"]["disable_after_idle"] is None
