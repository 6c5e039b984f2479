"""The agents CLI: secrets shown once and stored hashed, keys for private_key_jwt, every action audited."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from jwt.algorithms import ECAlgorithm

from gateway.config.files import load_agents
from gateway.errors import ConfigError
from tests.identity.support import cli, client_credentials, mcp_status, token
from tests.support.harness import running_gateway

pytestmark = pytest.mark.anyio


async def test_agents_created_by_the_cli_authenticate_with_the_secret_printed_once(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        secret = (
            await cli(gw, "agents", "create", "cli-bot", "--owner", "c@example.com", "--cost-center", "lab")
        ).strip()
        assert secret.startswith("mgw_") and len(secret) > 40
        record = await gw.gateway.store.get_agent("cli-bot")
        assert record is not None and record.secret_hash is not None and secret not in record.secret_hash
        assert secret not in (gw.root / "state" / "audit-cli.jsonl").read_text()
        body = await client_credentials(gw, "cli-bot", secret)

        rows = json.loads(await cli(gw, "agents", "list", "--json"))
        assert next(r for r in rows if r["id"] == "cli-bot")["has_secret"] is True

        new_secret = (await cli(gw, "agents", "rotate", "cli-bot")).strip()
        stale = await token(gw, {"grant_type": "client_credentials", "client_id": "cli-bot", "client_secret": secret})
        assert stale.status_code == 401
        await client_credentials(gw, "cli-bot", new_secret)

        await cli(gw, "agents", "disable", "cli-bot")
        assert (await mcp_status(gw, body["access_token"])).status_code == 401
        await cli(gw, "agents", "enable", "cli-bot")
        await cli(gw, "agents", "create", "alice-bot", "--owner", "x@example.com", status=1)  # in agents.yaml

        events = [json.loads(line) for line in (gw.root / "state" / "audit-cli.jsonl").read_text().splitlines()]
        actions = [(e["event"], e.get("agent")) for e in events if e.get("actor", "").startswith("cli")]
        for expected in ("agent.created", "agent.secret_rotated", "agent.disabled", "agent.enabled"):
            assert (expected, "cli-bot") in actions


async def test_an_agent_can_register_public_keys_instead_of_a_secret(tmp_path):
    key = generate_private_key(SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1"}
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [jwk]}))
    (tmp_path / "private.json").write_text(ECAlgorithm.to_jwk(key, as_dict=False))
    async with running_gateway(tmp_path, manifests=[]) as gw:
        out = await cli(
            gw, "agents", "create", "keyed-bot", "--owner", "k@example.com", "--jwks", str(tmp_path / "keys.json")
        )
        assert "private_key_jwt" in out
        await cli(
            gw,
            "agents",
            "create",
            "leaky-bot",
            "--owner",
            "k@example.com",
            "--jwks",
            str(tmp_path / "private.json"),
            status=1,
        )
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": "keyed-bot", "sub": "keyed-bot", "aud": gw.url, "exp": now + 60, "jti": uuid.uuid4().hex},
            key,
            algorithm="ES256",
            headers={"kid": "k1"},
        )
        response = await token(
            gw,
            {
                "grant_type": "client_credentials",
                "client_assertion": assertion,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
        )
        assert response.status_code == 200, response.text


def test_agents_yaml_with_private_key_material_is_refused_in_one_line(tmp_path):
    key = generate_private_key(SECP256R1())
    path = tmp_path / "agents.yaml"
    path.write_text(
        json.dumps(
            {"agents": {"bot": {"owner": "o@example.com", "jwks": {"keys": [json.loads(ECAlgorithm.to_jwk(key))]}}}}
        )
    )
    with pytest.raises(ConfigError) as error:
        load_agents(path)
    assert str(error.value) == f"{path}: agents.bot.jwks: must hold public keys only (found private key material)"
