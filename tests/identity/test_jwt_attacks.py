"""Forged and misused session tokens never authenticate: every one gets 401 with the challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import AuthError
from gateway.identity.jwks import select_key
from gateway.identity.keys import KeyRing
from gateway.identity.tokens import Tokens
from tests.identity.support import mcp_status
from tests.support.harness import running_gateway

pytestmark = pytest.mark.anyio


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


async def test_forged_and_misused_tokens_are_all_refused_with_the_challenge(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        g = gw.gateway
        alice, alice_token = await g.sessions.open("alice-bot", via="test")
        bob, _ = await g.sessions.open("bob-bot", via="test")
        closed, closed_token = await g.sessions.open("alice-bot", via="test")
        await g.operations("test").end_session(closed.sid, "closed")
        kid, key = g.keys.sign_key()
        claims = jwt.decode(alice_token, options={"verify_signature": False})
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        def signed(header: dict[str, Any] | None = None, **changes: Any) -> str:
            body = {k: v for k, v in {**claims, **changes}.items() if v is not None}
            return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt", **(header or {})})

        hs_input = _unsigned({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims)
        hs_signature = _b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
        attacks = {
            "alg none": _unsigned({"alg": "none", "typ": "at+jwt", "kid": kid}, claims) + ".",
            "HS256 keyed with the public key": f"{hs_input}.{hs_signature}",
            "wrong aud": signed(aud="https://other.example"),
            "wrong iss": signed(iss="https://other.example"),
            "expired": signed(exp=int(time.time()) - 5),
            "missing sid": signed(sid=None),
            "wrong typ": signed({"typ": "JWT"}),
            "sid of another agent": signed(sid=bob.sid),
            "closed session": closed_token,
            "signed by a stranger": jwt.encode(
                claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
            ),
            "subject swapped": signed(sub="mallory@example.com"),
            "a credential kind it never issues": signed(credential="root"),
            "a credential claim that is not a name": signed(credential=["workload"]),
        }
        for name, forged in attacks.items():
            response = await mcp_status(gw, forged)
            assert response.status_code == 401, name
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
        assert (await mcp_status(gw, alice_token)).status_code == 200


async def test_a_token_signed_by_a_rotated_out_key_fails_after_its_overlap(tmp_path):
    agents = {"long-bot": {"owner": "l@example.com", "grant": {"budget": {"session_ttl": "8h", "idle_timeout": "8h"}}}}
    async with running_gateway(tmp_path, manifests=[], agents=agents) as gw:
        _, old = await gw.gateway.sessions.open("long-bot", via="test")
        gw.gateway.keys.rotate(gw.clock(), overlap=60)
        assert (await mcp_status(gw, old)).status_code == 200  # inside the overlap
        gw.clock.advance(120)
        response = await mcp_status(gw, old)
        assert response.status_code == 401
        assert "retired key" in response.json()["error_description"]


def test_a_token_verified_while_its_key_was_active_is_refused_after_the_overlap(tmp_path):
    now = [1_000_000.0]
    keys = KeyRing(tmp_path / "signing.pem")
    keys.load()
    tokens = Tokens(keys, "http://127.0.0.1:9", lambda: now[0])
    token, _ = tokens.issue(sid="s-1", agent="alice-bot", expires_at=now[0] + 3600)
    assert tokens.verify(token).sid == "s-1"  # cached while its key is the active one
    keys.rotate(now[0], overlap=60)
    assert tokens.verify(token).sid == "s-1"  # inside the overlap
    now[0] += 120
    with pytest.raises(AuthError, match="retired key"):
        tokens.verify(token)


# ------------------------------------------------------------------ property: mutations never verify


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokens, str]:
    keys = KeyRing(tmp_path_factory.mktemp("keys") / "signing.pem")
    keys.load()
    tokens = Tokens(keys, "http://127.0.0.1:9", time.time)
    token, _ = tokens.issue(sid="s-1", agent="alice-bot", expires_at=time.time() + 3600, task="t", grant="g")
    return tokens, token


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_any_change_to_a_valid_token_makes_it_fail_verification(token_setup, data):
    tokens, token = token_setup
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="))
    mutated = token[:position] + replacement + token[position + 1 :]
    if base64_equivalent(mutated, token):
        return
    with pytest.raises(AuthError):
        tokens.verify(mutated)


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "==")


def base64_equivalent(a: str, b: str) -> bool:
    """Two encodings of the same bytes (the last base64url character carries unused bits)."""
    pa, pb = a.split("."), b.split(".")
    if len(pa) != len(pb):
        return False
    try:
        return all(_decode(x) == _decode(y) for x, y in zip(pa, pb, strict=True))
    except ValueError:
        return False


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "iat", "sid", "client_id", "sub", "jti", "act"]),
        st.one_of(st.text(max_size=10), st.integers(), st.none()),
    )
)
def test_tokens_signed_with_any_other_key_never_verify(token_setup, claims):
    tokens, token = token_setup
    body = {**jwt.decode(token, options={"verify_signature": False}), **claims}
    signing_input = _unsigned(jwt.get_unverified_header(token), body)
    forged = f"{signing_input}.{_b64(Ed25519PrivateKey.generate().sign(signing_input.encode()))}"
    with pytest.raises(AuthError):
        tokens.verify(forged)


def test_a_malformed_key_in_a_key_set_is_skipped_and_the_good_one_still_verifies() -> None:
    private = Ed25519PrivateKey.generate()
    good = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    broken = {"kty": "OKP", "crv": "Ed25519"}  # no public key at all
    token = jwt.encode({"sub": "alice"}, private, algorithm="EdDSA")
    key = select_key([broken, good], {"alg": "EdDSA"}, error="invalid_grant")
    assert jwt.decode(token, key, algorithms=["EdDSA"])["sub"] == "alice"
