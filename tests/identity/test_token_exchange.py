"""RFC 8693 token exchange: an agent acting on behalf of a human from a configured identity provider."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.identity.support import (
    ACCESS_TOKEN_TYPE,
    basic,
    call_time,
    exchange_form,
    give_secret,
    identity_provider,
    token,
)
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio

AGENTS = {
    "helper-bot": {
        "owner": "owner@example.com",
        "delegators": ["*@example.com", "https://idp.test.example/|robot-7"],
        "grant": {"tools": ["time.*"]},
    },
    "closed-bot": {"owner": "owner@example.com", "grant": {"tools": ["time.*"]}},
}


async def _exchange(gw, secret: str, subject_token: str, agent: str = "helper-bot", **extra):
    return await token(gw, exchange_form(subject_token, **extra), basic(agent, secret))


async def test_an_exchanged_token_acts_for_the_human_and_the_audit_says_so(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config()]}
        async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            response = await _exchange(gw, secret, idp.sign(), task="triage")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["sub"] == "carol@example.com"
            assert claims["act"] == {"sub": "helper-bot"}
            assert claims["client_id"] == "helper-bot"

            assert not (await call_time(gw, body["access_token"])).is_error
            call = next(r for r in gw.audit("tool.call") if r.get("session") == body["session_id"])
            assert call["agent"] == "helper-bot" and call["on_behalf_of"] == "carol@example.com"
            opened = next(r for r in gw.audit("session.opened") if r["session"] == body["session_id"])
            assert opened["on_behalf_of"] == "carol@example.com" and opened["via"] == "token_exchange"


async def test_a_new_idp_signing_key_is_picked_up_at_a_bounded_refresh_rate(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config(jwks_refresh_min="30s")]}
        async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            assert (await _exchange(gw, secret, idp.sign())).status_code == 200
            assert idp.fetches == 1

            new_kid = idp.add_key("ES256")  # the IdP rotates; the gateway has the old set cached
            gw.clock.advance(31)
            assert (await _exchange(gw, secret, idp.sign(kid=new_kid))).status_code == 200
            assert idp.fetches == 2

            for n in range(5):  # made-up kids right after a fetch do not reach the IdP again
                response = await _exchange(gw, secret, _with_kid(idp.sign(kid=new_kid), f"made-up-{n}"))
                assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
            assert idp.fetches == 2


def _with_kid(token: str, kid: str) -> str:
    header = jwt.get_unverified_header(token)
    encoded = base64.urlsafe_b64encode(json.dumps({**header, "kid": kid}).encode()).rstrip(b"=").decode()
    return encoded + "." + token.split(".", 1)[1]


async def test_subject_tokens_from_an_unlisted_issuer_for_another_audience_or_expired_are_rejected(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config()]}
        async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            now = int(time.time())
            cases = {
                "issuer": idp.sign(iss="https://evil.example/"),
                "audience": idp.sign(aud="another-app"),
                "expired": idp.sign(exp=now - 60, iat=now - 600),
                "not a JWT": "not-a-jwt",
            }
            for case, subject_token in cases.items():
                response = await _exchange(gw, secret, subject_token)
                assert response.status_code == 400, case
                assert response.json()["error"] == "invalid_grant", case
            reasons = {r["reason"] for r in gw.audit("auth.failed")}
            assert {
                "subject_token issuer is not a configured identity provider",
                "JWT audience not accepted",
                "JWT expired",
            } <= reasons
            assert not gw.audit("session.opened")


async def test_delegation_follows_the_agents_delegators_and_the_tokens_may_act(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config()]}
        async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            closed_secret = await give_secret(gw, "closed-bot")

            async def outcome(subject_token: str, agent: str = "helper-bot", key: str = secret) -> str:
                response = await _exchange(gw, key, subject_token, agent=agent)
                return "ok" if response.status_code == 200 else response.json()["error"]

            assert await outcome(idp.sign(email="mallory@evil.example")) == "invalid_grant"
            assert await outcome(idp.sign(email_verified=False)) == "invalid_grant"  # unverified email never counts
            assert await outcome(idp.sign(email=None, email_verified=None, sub="robot-7")) == "ok"  # iss|sub entry
            assert await outcome(idp.sign(may_act={"sub": "helper-bot"})) == "ok"
            assert await outcome(idp.sign(may_act={"sub": "someone-else"})) == "invalid_grant"
            assert await outcome(idp.sign(), agent="closed-bot", key=closed_secret) == "invalid_grant"  # no delegators


async def test_exchange_requests_missing_what_rfc_8693_requires_are_invalid_requests(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config()]}
        async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
            secret = await give_secret(gw, "helper-bot")
            subject = idp.sign()
            for form in (
                {"subject_token_type": None},
                {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"},
                {"actor_token": subject, "actor_token_type": "urn:ietf:params:oauth:token-type:jwt"},
                {"session_id": "s-whatever"},
            ):
                data = {k: v for k, v in exchange_form(subject, **form).items() if v is not None}
                response = await token(gw, data, basic("helper-bot", secret))
                assert response.status_code == 400, form
                assert response.json()["error"] == "invalid_request", form


async def test_an_unreachable_idp_refuses_the_exchange_with_503(tmp_path):
    async with identity_provider() as idp:
        extra = {"identity_providers": [idp.config()]}
        subject = idp.sign()
    # the IdP is gone now
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
        secret = await give_secret(gw, "helper-bot")
        response = await _exchange(gw, secret, subject)
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
