"""Workload identity federation: platform JWTs (Kubernetes service accounts, SPIFFE JWT-SVIDs) instead of secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.config.files import AgentSpec, GatewayConfig, check_workloads
from gateway.errors import ConfigError, OperatorError
from tests.identity.support import IdP, call_time, cli, identity_provider, token
from tests.support.harness import running_gateway, time_manifest
from tests.support.serving import sqlite_at_version

pytestmark = pytest.mark.anyio

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
K8S = "https://kubernetes.default.svc.cluster.local"
SPIFFE = "https://spire.example.org"
K8S_SUBJECT = "system:serviceaccount:research:bot"
SPIFFE_SUBJECT = "spiffe://example.org/ns/research/sa/indexer"


def _agents(k8s: IdP, spire: IdP | None = None) -> dict[str, Any]:
    agents: dict[str, Any] = {
        "k8s-bot": {
            "owner": "research@example.com",
            "grant": {"tools": ["time.*"]},
            "workload": {"issuer": k8s.issuer, "subject": K8S_SUBJECT},
        },
        "off-bot": {
            "owner": "research@example.com",
            "disabled": True,
            "grant": {"tools": ["time.*"]},
            "workload": {"issuer": k8s.issuer, "subject": "system:serviceaccount:research:retired"},
        },
    }
    if spire is not None:
        agents["spiffe-bot"] = {
            "owner": "research@example.com",
            "grant": {"tools": ["time.*"]},
            "workload": {"issuer": spire.issuer, "subject": SPIFFE_SUBJECT},
        }
    return agents


def _k8s_token(idp: IdP, **overrides: Any) -> str:
    """What a projected service account token looks like (`aud` a list, kubernetes.io claims, a jti)."""
    now = int(time.time())
    claims = {
        "iss": idp.issuer,
        "sub": K8S_SUBJECT,
        "aud": [idp.audience],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {"namespace": "research", "serviceaccount": {"name": "bot", "uid": str(uuid.uuid4())}},
        **overrides,
    }
    return idp.sign(claims, email=None, email_verified=None)  # sign() drops the claims set to None


def _grant(assertion: str, **extra: Any) -> dict[str, Any]:
    return {"grant_type": JWT_BEARER, "assertion": assertion, **extra}


async def test_a_kubernetes_service_account_token_opens_a_session_that_outlives_it_and_calls_a_tool(tmp_path):
    async with identity_provider(issuer=K8S, audience="mcp-gateway") as k8s:
        extra = {"workload_issuers": [k8s.config()]}
        async with running_gateway(tmp_path, manifests=[time_manifest()], agents=_agents(k8s), extra=extra) as gw:
            now = int(time.time())
            response = await token(gw, _grant(_k8s_token(k8s, exp=now + 120), task="nightly index"))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["token_type"] == "Bearer"
            assert body["expires_in"] > 3000  # the session's own TTL (1 h), not the assertion's two minutes
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["client_id"] == claims["sub"] == "k8s-bot" and claims["task"] == "nightly index"

            assert not (await call_time(gw, body["access_token"])).is_error
            issued = next(r for r in gw.audit("token.issued") if r["session"] == body["session_id"])
            assert issued["agent"] == "k8s-bot" and issued["credential"] == "workload" and issued["via"] == "workload"
            call = next(r for r in gw.audit("tool.call") if r.get("session") == body["session_id"])
            assert call["agent"] == "k8s-bot"
            record = await gw.gateway.store.get_agent("k8s-bot")
            assert record is not None and record.secret_hash is None  # nothing to leak


async def test_a_spiffe_jwt_svid_opens_a_session_and_calls_a_tool(tmp_path):
    async with identity_provider(issuer=K8S) as k8s, identity_provider("ES256", issuer=SPIFFE, audience="mcp") as spire:
        extra = {"workload_issuers": [k8s.config(), spire.config(algorithms=["ES256"])]}
        async with running_gateway(
            tmp_path, manifests=[time_manifest()], agents=_agents(k8s, spire), extra=extra
        ) as gw:
            now = int(time.time())
            svid = spire.sign(
                {"iss": spire.issuer, "sub": SPIFFE_SUBJECT, "aud": ["mcp"], "iat": now, "exp": now + 300},
                email=None,
                email_verified=None,
            )  # JWT-SVIDs carry no jti
            response = await token(gw, _grant(svid))
            assert response.status_code == 200, response.text
            assert not (await call_time(gw, response.json()["access_token"])).is_error
            issued = [r for r in gw.audit("token.issued") if r["agent"] == "spiffe-bot"]
            assert [r["credential"] for r in issued] == ["workload"]


def _forged(claims: dict[str, Any], alg: str, key: bytes = b"") -> str:
    """A token no JWT library would sign: HS256 keyed with the issuer's public key, or `none`."""

    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}"
    if alg == "none":
        return f"{signing_input}."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def test_bad_workload_jwts_are_refused_with_invalid_grant_and_audited(tmp_path):
    async with identity_provider(issuer=K8S) as k8s, identity_provider(issuer="https://evil.example") as evil:
        extra = {"workload_issuers": [k8s.config(algorithms=["RS256"])]}
        async with running_gateway(tmp_path, manifests=[], agents=_agents(k8s), extra=extra) as gw:
            now = int(time.time())
            public_pem = k8s.keys[0][1].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            genuine = jwt.decode(_k8s_token(k8s), options={"verify_signature": False})
            replayed = _k8s_token(k8s)
            assert (await token(gw, _grant(replayed))).status_code == 200
            evil.issuer = K8S  # another party claiming the platform's issuer, signing with its own key
            cases = {
                "wrong issuer": (_k8s_token(evil, iss="https://evil.example"), "workload JWT issuer is not configured"),
                "key of another party": (_k8s_token(evil), "no matching signing key"),
                "wrong audience": (_k8s_token(k8s, aud=["kubernetes"]), "JWT audience not accepted"),
                "expired": (_k8s_token(k8s, exp=now - 5, iat=now - 600, nbf=now - 600), "JWT expired"),
                "no exp": (_k8s_token(k8s, exp=None), "JWT lacks the exp claim"),
                "not yet valid": (_k8s_token(k8s, nbf=now + 600, iat=now), "JWT not valid yet"),
                "unknown subject": (
                    _k8s_token(k8s, sub="system:serviceaccount:research:intruder"),
                    "workload subject is not mapped to an agent",
                ),
                "disabled agent": (
                    _k8s_token(k8s, sub="system:serviceaccount:research:retired"),
                    "workload subject maps to a disabled agent",
                ),
                "HS256 keyed with the public key": (
                    _forged(genuine, "HS256", public_pem),
                    "JWT algorithm not accepted",
                ),
                "alg none": (_forged(genuine, "none"), "JWT algorithm not accepted"),
                "replayed jti": (replayed, "workload JWT replayed (jti already used)"),
                "an ID-JAG of the same issuer": (
                    k8s.sign(
                        {"sub": K8S_SUBJECT, "aud": k8s.audience, "jti": "j-1"}, header={"typ": "oauth-id-jag+jwt"}
                    ),
                    "an ID-JAG needs the agent to authenticate as the client",
                ),
            }
            for case, (assertion, reason) in cases.items():
                response = await token(gw, _grant(assertion))
                assert response.status_code == 400, case
                assert response.json() == {"error": "invalid_grant", "error_description": reason}, case
            reasons = {r["reason"] for r in gw.audit("auth.failed")}
            assert {reason for _, reason in cases.values()} <= reasons
            assert len(gw.audit("session.opened")) == 1  # only the first, genuine use
            another = await token(gw, _grant(_k8s_token(k8s), client_id="off-bot"))
            assert another.json()["error_description"] == "client_id is not the agent the workload JWT names"


async def test_an_algorithm_outside_the_issuers_list_is_refused_even_with_a_valid_signature(tmp_path):
    async with identity_provider("ES256", issuer=K8S) as k8s:
        extra = {"workload_issuers": [k8s.config(algorithms=["RS256"])]}  # the platform signs RS256 only
        async with running_gateway(tmp_path, manifests=[], agents=_agents(k8s), extra=extra) as gw:
            response = await token(gw, _grant(_k8s_token(k8s)))  # ES256, genuinely signed by a published key
            assert response.status_code == 400
            assert response.json()["error_description"] == "JWT algorithm not accepted"


async def test_the_grant_is_advertised_and_a_workload_agent_can_not_be_given_a_secret(tmp_path):
    async with identity_provider(issuer=K8S) as k8s:
        extra = {"workload_issuers": [k8s.config()]}
        async with running_gateway(tmp_path, manifests=[], agents=_agents(k8s), extra=extra) as gw:
            async with gw.http() as http:
                metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
            assert JWT_BEARER in metadata["grant_types_supported"]
            with pytest.raises(OperatorError, match="workload identity"):
                await gw.gateway.operations("test").rotate_secret("k8s-bot")
            response = await token(gw, {"grant_type": JWT_BEARER})
            assert response.status_code == 400 and response.json()["error_description"] == "assertion is required"


def test_an_agent_workload_must_name_a_configured_issuer_once(tmp_path: Path) -> None:
    config = GatewayConfig(
        public_url="http://127.0.0.1:1",
        agents=tmp_path / "agents.yaml",
        workload_issuers=[{"issuer": K8S, "jwks_url": "http://127.0.0.1:2/jwks.json", "audience": "mcp-gateway"}],
    )
    spec = {"owner": "o@example.com", "workload": {"issuer": K8S, "subject": K8S_SUBJECT}}
    check_workloads(config, {"a": AgentSpec.model_validate(spec)})
    with pytest.raises(ConfigError, match=r"agents.b.workload: issuer 'https://other' is not in gateway.yaml"):
        check_workloads(
            config, {"b": AgentSpec.model_validate({**spec, "workload": {"issuer": "https://other", "subject": "x"}})}
        )
    with pytest.raises(ConfigError, match="agents.b.workload: the same issuer and subject as agent 'a'"):
        check_workloads(config, {"a": AgentSpec.model_validate(spec), "b": AgentSpec.model_validate(spec)})


def test_bad_workload_and_dpop_settings_stop_startup_with_one_line(tmp_path: Path) -> None:
    entry = {"issuer": K8S, "jwks_url": "http://127.0.0.1:2/jwks.json", "audience": "mcp-gateway"}
    for settings, message in (
        ({"workload_issuers": [entry, entry]}, f"issuer '{K8S}' is listed more than once"),
        ({"workload_issuers": [{**entry, "algorithms": ["HS256"]}]}, "'HS256' is not one of"),
        ({"workload_issuers": [{**entry, "jwks_url": "http://k8s.example/jwks"}]}, "plain http is allowed only"),
        ({"dpop": "sometimes"}, "Input should be 'off', 'optional' or 'required'"),
    ):
        with pytest.raises(ValueError, match=message):
            GatewayConfig.model_validate({"public_url": "http://127.0.0.1:1", **settings})
    with pytest.raises(ValueError, match="String should have at least 1 character"):
        AgentSpec.model_validate({"owner": "o@example.com", "workload": {"issuer": K8S, "subject": ""}})


async def test_an_agent_created_with_a_workload_identity_from_the_cli_or_the_api_opens_sessions_with_its_jwt(tmp_path):
    admin = "admin-token-for-workload-tests"
    async with identity_provider(issuer=K8S) as k8s:
        extra = {"workload_issuers": [k8s.config()], "admin_token": admin}
        async with running_gateway(tmp_path, manifests=[], agents=_agents(k8s), extra=extra) as gw:
            runner = "system:serviceaccount:ci:runner"
            out = await cli(
                gw,
                "agents",
                "create",
                "ci-bot",
                "--owner",
                "ci@example.com",
                "--workload-issuer",
                K8S,
                "--workload-subject",
                runner,
            )
            assert out.strip() == "created ci-bot (workload)"  # no secret printed: none exists
            response = await token(gw, _grant(_k8s_token(k8s, sub=runner)))
            assert response.status_code == 200, response.text
            assert jwt.decode(response.json()["access_token"], options={"verify_signature": False})["sub"] == "ci-bot"
            listed = await cli(gw, "agents", "list")
            assert any(line.startswith("ci-bot") and line.endswith("workload") for line in listed.splitlines())

            await cli(gw, "agents", "rotate", "ci-bot", status=1)  # it never gets a secret
            await cli(
                gw,
                "agents",
                "create",
                "copy-bot",
                "--owner",
                "ci@example.com",  # taken by ci-bot
                "--workload-issuer",
                K8S,
                "--workload-subject",
                runner,
                status=1,
            )
            await cli(
                gw,
                "agents",
                "create",
                "copy-bot",
                "--owner",
                "ci@example.com",  # taken in agents.yaml
                "--workload-issuer",
                K8S,
                "--workload-subject",
                K8S_SUBJECT,
                status=1,
            )
            await cli(
                gw,
                "agents",
                "create",
                "far-bot",
                "--owner",
                "ci@example.com",
                "--workload-issuer",
                "https://unlisted.example",
                "--workload-subject",
                "x",
                status=1,
            )
            await cli(
                gw, "agents", "create", "half-bot", "--owner", "ci@example.com", "--workload-issuer", K8S, status=1
            )

            headers = {"Authorization": f"Bearer {admin}"}
            async with gw.http() as http:
                created = await http.post(
                    "/admin/agents",
                    headers=headers,
                    json={
                        "id": "api-bot",
                        "owner": "ci@example.com",
                        "workload": {"issuer": K8S, "subject": "system:serviceaccount:ci:api"},
                    },
                )
                assert created.status_code == 201 and created.json() == {"id": "api-bot"}, created.text
                taken = await http.post(
                    "/admin/agents",
                    headers=headers,
                    json={
                        "id": "api-bot-2",
                        "owner": "ci@example.com",
                        "workload": {"issuer": K8S, "subject": "system:serviceaccount:ci:api"},
                    },
                )
                assert taken.status_code == 409 and "already has this workload identity" in taken.json()["error"]
                listed_json = (await http.get("/admin/agents", headers=headers)).json()["agents"]
            api_bot = next(a for a in listed_json if a["id"] == "api-bot")
            assert api_bot["workload"] == {"issuer": K8S, "subject": "system:serviceaccount:ci:api"}
            assert api_bot["has_secret"] is False
            response = await token(gw, _grant(_k8s_token(k8s, sub="system:serviceaccount:ci:api")))
            assert response.status_code == 200, response.text
            created_records = [r for r in gw.audit("agent.created") if r["agent"] == "api-bot"]  # the CLI's: own chain
            assert [r["credential"] for r in created_records] == ["workload"]


async def test_a_store_made_before_workload_identities_is_upgraded_in_place(tmp_path: Path) -> None:
    from gateway.store.base import AgentRecord
    from gateway.store.sqlite import SQLiteStore

    path = tmp_path / "gateway.db"
    db = sqlite_at_version(path, 3)  # the schema as the release before workload identities (migration 4) left it
    db.execute("INSERT INTO agents (id, owner, source, created_at) VALUES ('old-bot', 'o@example.com', 'store', 0)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get_agent("old-bot")
        assert old is not None and old.workload is None
        workload = {"issuer": K8S, "subject": K8S_SUBJECT}
        assert await store.create_agent(AgentRecord(id="new-bot", owner="o@example.com", workload=workload))
        assert not await store.create_agent(AgentRecord(id="twin-bot", owner="o@example.com", workload=workload))
        found = await store.agent_for_workload(K8S, K8S_SUBJECT)
        assert found is not None and found.id == "new-bot"
    finally:
        await store.close()


async def test_an_expired_workload_agent_gets_no_token_even_before_the_sweep_disables_it(tmp_path):
    async with identity_provider(issuer=K8S, audience="mcp-gateway") as k8s:
        agents = _agents(k8s)
        agents["k8s-bot"]["expires"] = "2020-01-01"
        extra = {"workload_issuers": [k8s.config()]}
        async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra=extra) as gw:
            await gw.gateway.store.update_agent("k8s-bot", disabled=False)  # as if the sweep had not run
            gw.gateway.agents.forget("k8s-bot")
            response = await token(gw, _grant(_k8s_token(k8s)))
            assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
