"""Two `mcp-gateway serve` processes on one database, driven only through their HTTP endpoints.

Nothing is shared but the database: each replica has its own directory, so the
credential HMAC key, the signing keys and the replay cache can only agree
because they live in the store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from tests.identity.support import (
    INITIALIZE,
    DpopKey,
    basic,
    call_time,
    cli,
    client_credentials,
    mcp_status,
    token,
)
from tests.identity.test_token_endpoint import _assertion, _jwt_form
from tests.replicas.support import Replica, serve_replica
from tests.support.harness import free_port, time_manifest
from tests.support.postgres import database

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-for-replica-tests"
AGENT_KEY = Ed25519PrivateKey.generate()
AGENTS: dict[str, Any] = {
    "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}},
    "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["time.*"]}},
    "keyed-bot": {
        "owner": "k@example.com",
        "grant": {"tools": ["time.*"]},
        "jwks": {"keys": [{**json.loads(OKPAlgorithm.to_jwk(AGENT_KEY.public_key())), "kid": "agent-key-1"}]},
    },
}


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Replica, Replica]]:
    root = tmp_path_factory.mktemp("processes")
    shared = {
        "public_url": f"http://127.0.0.1:{free_port()}",
        "manifests": [time_manifest()],
        "agents": AGENTS,
        "admin_token": ADMIN,
    }
    async with (
        database() as dsn,
        serve_replica(root / "a", dsn=dsn, instance="replica-a", **shared) as a,
        serve_replica(root / "b", dsn=dsn, instance="replica-b", **shared) as b,
    ):
        yield a, b


async def admin(replica: Replica, path: str) -> dict[str, Any]:
    async with replica.http() as http:
        response = await http.post(path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def revoke(replica: Replica, access_token: str, agent: str, secret: str) -> httpx.Response:
    async with replica.http() as http:
        return await http.post("/oauth/revoke", data={"token": access_token}, headers=basic(agent, secret))


async def test_a_secret_issued_on_one_replica_gets_a_token_on_the_other_that_works_everywhere(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    secret = (await admin(a, "/admin/agents/alice-bot/rotate"))["client_secret"]
    issued = await client_credentials(b, "alice-bot", secret, task="two processes")
    for replica in (a, b):
        assert not (await call_time(replica, issued["access_token"])).is_error
    sessions = [r["session"] for r in a.audit("tool.call") + b.audit("tool.call")]
    assert sessions == [issued["session_id"], issued["session_id"]]


async def test_a_token_revoked_on_one_replica_is_refused_by_the_other_on_the_next_request(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    secret = (await admin(b, "/admin/agents/bob-bot/rotate"))["client_secret"]
    issued = await client_credentials(a, "bob-bot", secret)
    assert (await mcp_status(b, issued["access_token"])).status_code == 200
    assert (await revoke(a, issued["access_token"], "bob-bot", secret)).status_code == 200
    refused = await mcp_status(b, issued["access_token"])
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_an_agent_disabled_on_one_replica_gets_no_token_from_the_other(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    secret = (await admin(a, "/admin/agents/bob-bot/rotate"))["client_secret"]
    live = await client_credentials(a, "bob-bot", secret)
    disabled = await admin(b, "/admin/agents/bob-bot/disable")
    assert disabled["revoked"] == [live["session_id"]]
    refused = await token(a, {"grant_type": "client_credentials"}, basic("bob-bot", secret))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert (await mcp_status(a, live["access_token"])).status_code == 401


async def test_a_client_assertion_used_on_one_replica_cannot_be_replayed_on_the_other(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    assertion = _assertion(AGENT_KEY, "keyed-bot", a.public_url)
    first = await token(a, _jwt_form(assertion))
    assert first.status_code == 200, first.text
    replay = await token(b, _jwt_form(assertion))
    assert replay.status_code == 401
    assert replay.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    assert any(r["reason"] == "client assertion replayed" for r in b.audit("auth.failed"))


async def test_a_dpop_proof_used_on_one_replica_cannot_be_replayed_on_the_other(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    secret = (await admin(a, "/admin/agents/alice-bot/rotate"))["client_secret"]
    key = DpopKey()
    issued = await token(
        b,
        {"grant_type": "client_credentials"},
        {**basic("alice-bot", secret), "DPoP": key.proof("POST", f"{b.public_url}/oauth/token")},
    )
    assert issued.status_code == 200 and issued.json()["token_type"] == "DPoP", issued.text
    bound = issued.json()["access_token"]
    proof = key.proof("POST", f"{a.public_url}/mcp", bound)  # the URL the load balancer gives both
    headers = {"Authorization": f"DPoP {bound}", "DPoP": proof, "Accept": "application/json, text/event-stream"}
    answers = []
    for replica in (a, b):
        async with replica.http() as http:
            answers.append(await http.post("/mcp", json=INITIALIZE, headers=headers))
    assert answers[0].status_code == 200, answers[0].text
    assert answers[1].status_code == 401
    assert answers[1].json() == {
        "error": "invalid_dpop_proof",
        "error_description": "DPoP proof replayed (jti already used)",
    }


async def test_a_key_rotated_from_the_cli_signs_on_both_replicas_and_the_old_one_keeps_verifying(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    old_token = (await cli(a, "sessions", "open", "--agent", "alice-bot")).strip()
    rotated = await cli(a, "keys", "rotate")
    new_kid, old_kid = rotated.split()[2].rstrip(";"), rotated.split()[3]
    new_token = (await cli(b, "sessions", "open", "--agent", "alice-bot")).strip()
    assert [jwt.get_unverified_header(t)["kid"] for t in (old_token, new_token)] == [old_kid, new_kid]
    for replica in (a, b):
        for issued in (old_token, new_token):
            assert (await mcp_status(replica, issued)).status_code == 200
        async with replica.http() as http:
            published = {key["kid"] for key in (await http.get("/jwks.json")).json()["keys"]}
        assert published == {old_kid, new_kid}
