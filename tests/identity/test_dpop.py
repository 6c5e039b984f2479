"""DPoP (RFC 9449): session tokens bound to a key the agent holds, so a copied token is useless alone."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import AuthError
from gateway.identity.dpop import check_proof, normalise_url
from tests.identity.support import (
    INITIALIZE,
    DpopAuth,
    DpopKey,
    basic,
    dpop_client,
    give_secret,
    token,
)
from tests.support.harness import DEFAULT_AGENTS, Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

AGENTS = {
    **DEFAULT_AGENTS,
    "strict-bot": {"owner": "sec@example.com", "dpop": "required", "grant": {"tools": ["time.*"]}},
    "legacy-bot": {"owner": "ops@example.com", "dpop": "off", "grant": {"tools": ["time.*"]}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def _bound_token(gw: Harness, key: DpopKey, agent: str = "alice-bot") -> dict[str, Any]:
    secret = await give_secret(gw, agent)
    proof = key.proof("POST", f"{gw.url}/oauth/token")
    response = await token(gw, {"grant_type": "client_credentials"}, {**basic(agent, secret), "DPoP": proof})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _initialize(gw: Harness, headers: dict[str, str], path: str = "/mcp") -> httpx.Response:
    async with gw.http() as http:
        return await http.post(path, json=INITIALIZE, headers={**ACCEPT, **headers})


def _refused(response: httpx.Response) -> str:
    """The reason of a DPoP refusal, once it has the shape RFC 9449 §7.1 fixes."""
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('DPoP error="invalid_dpop_proof"') and "resource_metadata=" in challenge
    assert response.json()["error"] == "invalid_dpop_proof"
    return str(response.json()["error_description"])


async def test_a_bound_token_works_with_fresh_proofs_from_the_sdk_client_and_the_audit_names_the_key(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        key = DpopKey()
        body = await _bound_token(gw, key)
        assert body["token_type"] == "DPoP"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": key.thumbprint}

        for mode in ("auto", "legacy"):  # 2026-07-28 sessionless, and the handshake era (GET stream, DELETE)
            auth = DpopAuth(key, body["access_token"])
            async with dpop_client(gw.mcp_url, auth, mode=mode) as client:
                for _ in range(3):
                    assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            assert auth.proofs >= 4  # one fresh proof per request
        issued = next(r for r in gw.audit("token.issued") if r["session"] == body["session_id"])
        assert issued["dpop_jkt"] == key.thumbprint and issued["credential"] == "secret"
        calls = [r for r in gw.audit("tool.call") if r.get("session") == body["session_id"]]
        assert len(calls) == 6


async def test_a_copied_bound_token_is_useless_without_the_key(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        key = DpopKey()
        stolen = (await _bound_token(gw, key))["access_token"]
        ok = await _initialize(gw, {"Authorization": f"DPoP {stolen}", "DPoP": key.proof("POST", gw.mcp_url, stolen)})
        assert ok.status_code == 200  # the holder of the key can; the token is now in the verified-token cache
        assert "bound" in _refused(await _initialize(gw, {"Authorization": f"Bearer {stolen}"}))
        assert "exactly one DPoP proof" in _refused(await _initialize(gw, {"Authorization": f"DPoP {stolen}"}))
        thief = DpopKey()  # the thief's own key makes valid proofs, but for the wrong key
        proof = thief.proof("POST", gw.mcp_url, stolen)
        assert "another key" in _refused(await _initialize(gw, {"Authorization": f"DPoP {stolen}", "DPoP": proof}))
        with pytest.raises(BaseException):  # noqa: B017 - the SDK surfaces a 401 as an ExceptionGroup
            async with dpop_client(gw.mcp_url, DpopAuth(thief, stolen)) as client:
                await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not gw.audit("tool.call")


async def test_a_proof_for_another_url_or_method_replayed_stale_or_hashing_another_token_is_refused(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        key = DpopKey()
        bound = (await _bound_token(gw, key))["access_token"]
        other = (await _bound_token(gw, key))["access_token"]
        now = int(time.time())
        replayed = key.proof("POST", gw.mcp_url, bound)
        assert (await _initialize(gw, {"Authorization": f"DPoP {bound}", "DPoP": replayed})).status_code == 200
        cases = {
            "another URL": (key.proof("POST", f"{gw.url}/servers/time/mcp", bound), "htu"),
            "another host": (key.proof("POST", f"http://gateway.example:{gw.port}/mcp", bound), "htu"),
            "another method": (key.proof("GET", gw.mcp_url, bound), "htm"),
            "replayed": (replayed, "replayed"),
            "stale iat": (key.proof("POST", gw.mcp_url, bound, iat=now - 300), "iat"),
            "iat in the future": (key.proof("POST", gw.mcp_url, bound, iat=now + 300), "iat"),
            "wrong ath": (key.proof("POST", gw.mcp_url, other), "ath"),
            "no ath": (key.proof("POST", gw.mcp_url), "ath"),
            "no jti": (key.proof("POST", gw.mcp_url, bound, jti=None), "jti"),
            "wrong typ": (key.proof("POST", gw.mcp_url, bound, header={"typ": "JWT"}), "typ"),
            "private key in the header": (
                key.proof("POST", gw.mcp_url, bound, header={"jwk": {**key.jwk, "d": "x"}}),
                "public key",
            ),
            "not a JWT": ("not-a-proof", "malformed"),
        }
        for case, (proof, reason) in cases.items():
            answer = await _initialize(gw, {"Authorization": f"DPoP {bound}", "DPoP": proof})
            assert reason in _refused(answer), case
        reasons = {r["reason"] for r in gw.audit("auth.failed")}
        assert "DPoP proof replayed (jti already used)" in reasons
        assert "DPoP proof htu is not this request's URL" in reasons


async def test_a_proof_tampered_after_signing_is_refused(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS) as gw:
        key = DpopKey()
        bound = (await _bound_token(gw, key))["access_token"]
        head, payload, signature = key.proof("POST", f"{gw.url}/servers/elsewhere/mcp", bound).split(".")
        genuine_payload = key.proof("POST", gw.mcp_url, bound).split(".")[1]
        forged = f"{head}.{genuine_payload}.{signature}"
        reason = _refused(await _initialize(gw, {"Authorization": f"DPoP {bound}", "DPoP": forged}))
        assert reason == "DPoP proof signature invalid"


async def test_dpop_required_refuses_token_requests_without_a_proof_and_off_issues_bearer_tokens(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS) as gw:
        secret = await give_secret(gw, "strict-bot")
        response = await token(gw, {"grant_type": "client_credentials"}, basic("strict-bot", secret))
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_dpop_proof",
            "error_description": "a DPoP proof is required for this agent's tokens",
        }
        key = DpopKey()
        wrong_url = key.proof("POST", f"{gw.url}/mcp")
        response = await token(
            gw, {"grant_type": "client_credentials"}, {**basic("strict-bot", secret), "DPoP": wrong_url}
        )
        assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"
        assert (await _bound_token(gw, key, "strict-bot"))["token_type"] == "DPoP"

        legacy = await _bound_token(gw, key, "legacy-bot")  # a proof is ignored where dpop is off
        assert legacy["token_type"] == "Bearer"
        assert "cnf" not in jwt.decode(legacy["access_token"], options={"verify_signature": False})
        plain = await _initialize(gw, {"Authorization": f"Bearer {legacy['access_token']}"})
        assert plain.status_code == 200
        posing = await _initialize(
            gw,
            {
                "Authorization": f"DPoP {legacy['access_token']}",
                "DPoP": key.proof("POST", gw.mcp_url, legacy["access_token"]),
            },
        )
        assert posing.status_code == 401
        assert posing.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_an_agent_required_to_use_dpop_can_not_use_an_unbound_token(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS) as gw:
        unbound = await gw.open_session("strict-bot")  # e.g. issued before its agents.yaml said required
        reason = _refused(await _initialize(gw, {"Authorization": f"Bearer {unbound}"}))
        assert reason == "this agent's tokens must be DPoP-bound: get one with a DPoP proof"


async def test_usage_reports_and_revocation_with_a_bound_token_need_a_proof(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS) as gw:
        key = DpopKey()
        body = await _bound_token(gw, key)
        bound = body["access_token"]
        report = {"model": "m", "input_tokens": 10, "output_tokens": 5}
        usage_url = f"{gw.url}/v1/usage"
        async with gw.http() as http:
            refused = await http.post("/v1/usage", json=report, headers={"Authorization": f"Bearer {bound}"})
            assert _refused(refused)
            accepted = await http.post(
                "/v1/usage",
                json=report,
                headers={"Authorization": f"DPoP {bound}", "DPoP": key.proof("POST", usage_url, bound)},
            )
            assert accepted.status_code == 200, accepted.text

            revoke_url = f"{gw.url}/oauth/revoke"
            thief = await http.post("/oauth/revoke", data={"token": bound})
            assert _refused_at_revoke(thief)
            assert (await gw.gateway.store.get_session(body["session_id"])).state == "active"
            owner = await http.post(
                "/oauth/revoke", data={"token": bound}, headers={"DPoP": key.proof("POST", revoke_url, bound)}
            )
            assert owner.status_code == 200
            assert (await gw.gateway.store.get_session(body["session_id"])).state == "closed"


def _refused_at_revoke(response: httpx.Response) -> bool:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    return True


async def test_metadata_advertises_dpop_unless_it_is_off(tmp_path):
    async with running_gateway(tmp_path / "on", manifests=[], agents=AGENTS) as gw:
        async with gw.http() as http:
            server = (await http.get("/.well-known/oauth-authorization-server")).json()
            resource = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
        assert "ES256" in server["dpop_signing_alg_values_supported"]
        assert "HS256" not in server["dpop_signing_alg_values_supported"]
        assert resource["dpop_bound_access_tokens_required"] is False
    agents = {"alice-bot": DEFAULT_AGENTS["alice-bot"]}
    async with running_gateway(tmp_path / "off", manifests=[], agents=agents, extra={"dpop": "off"}) as gw:
        async with gw.http() as http:
            server = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert "dpop_signing_alg_values_supported" not in server


async def test_with_nonces_a_proof_needs_a_fresh_nonce_the_gateway_handed_out(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS, extra={"dpop_nonce": True}) as gw:
        key = DpopKey()
        secret = await give_secret(gw, "alice-bot")
        token_url = f"{gw.url}/oauth/token"
        asked = await token(
            gw,
            {"grant_type": "client_credentials"},
            {**basic("alice-bot", secret), "DPoP": key.proof("POST", token_url)},
        )
        assert asked.status_code == 400 and asked.json()["error"] == "use_dpop_nonce"
        nonce = asked.headers["dpop-nonce"]
        issued = await token(
            gw,
            {"grant_type": "client_credentials"},
            {**basic("alice-bot", secret), "DPoP": key.proof("POST", token_url, nonce=nonce)},
        )
        assert issued.status_code == 200 and issued.json()["token_type"] == "DPoP", issued.text
        bound = issued.json()["access_token"]

        auth = DpopAuth(key, bound)  # no nonce yet: the first request is answered use_dpop_nonce, then retried
        async with dpop_client(gw.mcp_url, auth) as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        assert auth.retries == 1

        stale = auth.nonce
        gw.clock.advance(130)  # two nonce periods later
        answer = await _initialize(
            gw,
            {
                "Authorization": f"DPoP {bound}",
                "DPoP": key.proof("POST", gw.mcp_url, bound, nonce=stale, iat=int(gw.clock())),
            },
        )
        assert answer.status_code == 401 and answer.json()["error"] == "use_dpop_nonce"
        assert answer.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce"')
        fresh = answer.headers["dpop-nonce"]
        assert fresh != stale
        forged = fresh[:-4] + ("AAAA" if not fresh.endswith("AAAA") else "BBBB")
        for nonce, status in ((forged, 401), (fresh, 200)):
            answer = await _initialize(
                gw,
                {
                    "Authorization": f"DPoP {bound}",
                    "DPoP": key.proof("POST", gw.mcp_url, bound, nonce=nonce, iat=int(gw.clock())),
                },
            )
            assert answer.status_code == status, answer.text
        assert answer.headers["dpop-nonce"]  # every answer to a DPoP request carries the current nonce
        assert not any(r["reason"].startswith("DPoP proof needs a fresh nonce") for r in gw.audit("auth.failed"))


# ------------------------------------------------------------------ properties of the pure checks

URL = "https://gw.example.com/mcp"
_KEY = DpopKey()
_PATHS = st.sampled_from(["/mcp", "/mcp/", "/servers/time/mcp", "/v1/usage", "/MCP"])
_HOSTS = st.sampled_from(
    ["gw.example.com", "GW.example.com", "gw.example.com:443", "gw.example.com:8443", "evil.example.com"]
)


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["POST", "GET", "DELETE", "post"]),
    scheme=st.sampled_from(["https", "http", "HTTPS"]),
    host=_HOSTS,
    path=_PATHS,
    query=st.sampled_from(["", "?a=1", "#frag"]),
)
def test_a_proof_is_accepted_exactly_for_its_own_method_and_normalised_url(method, scheme, host, path, query):
    htu = f"{scheme}://{host}{path}{query}"
    proof = _KEY.proof(method, htu, "tok")
    same = method == "POST" and normalise_url(htu) == normalise_url(URL)
    try:
        check_proof(proof, method="POST", url=URL, now=time.time(), access_token="tok")
        accepted = True
    except AuthError:
        accepted = False
    assert accepted == same
    assert same == (
        method == "POST"
        and scheme.lower() == "https"
        and host.lower() in ("gw.example.com", "gw.example.com:443")
        and path == "/mcp"
    )
