"""Every refusal of the sign-in, each with its audit record and a clear OAuth error, against the real IdP,
real Chromium and metadata documents served over HTTPS."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.identity.support import cli
from tests.login.support import authorize_in_browser, browser, sign_in_world

pytestmark = pytest.mark.anyio


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def authorize_url(
    world: Any,
    client_id: str,
    *,
    redirect_uri: str | None = None,
    challenge: str | None = None,
    method: str | None = "S256",
    state: str = "client-state",
    **extra: str,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri or world.redirect_uri,
        "state": state,
        "code_challenge": challenge or pkce()[1],
        "code_challenge_method": method,
        "resource": f"{world.gw.url}/mcp",
        **extra,
    }
    return f"{world.gw.url}/oauth/authorize?{urlencode({k: v for k, v in params.items() if v is not None})}"


def failures(world: Any) -> list[str]:
    return [r["reason"] for r in world.gw.audit("login.failed")]


async def redeem(
    http: httpx.AsyncClient,
    code: str,
    verifier: str,
    client_id: str,
    redirect_uri: str,
) -> httpx.Response:
    return await http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
        },
    )


async def test_authorization_requests_the_gateway_must_not_redirect_are_refused_on_a_page(tmp_path):
    async with sign_in_world(tmp_path) as world, httpx.AsyncClient() as http:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        cases = {
            # a redirect URI not in the document (not even a longer one with the same prefix)
            authorize_url(
                world, client_id, redirect_uri=f"{world.redirect_uri}/evil"
            ): "redirect_uri is not one the client lists",
            # a document whose client_id is not its URL
            authorize_url(
                world,
                world.docs.add(
                    "/liar.json", [world.redirect_uri], client_id="https://vscode.dev/oauth/client-metadata.json"
                ),
            ): "the metadata document's client_id is not its own URL",
            # outside the trust globs
            authorize_url(
                world, "https://untrusted.example/oauth/client.json"
            ): "the metadata document URL matches no clients.metadata_documents glob",
            authorize_url(world, world.docs.url("/big.json")): "the metadata document is larger than 5120 bytes",
            authorize_url(world, world.docs.url("/slow.json")): "fetching the metadata document took longer than 2 s",
            authorize_url(
                world, world.docs.url("/redirect.json")
            ): "the metadata document URL redirects; redirects are not followed",
            authorize_url(world, "dcr-unknown"): "client_id is not a registered client",
        }
        for url, reason in cases.items():
            answer = await http.get(url)
            assert answer.status_code == 400, url
            assert "location" not in answer.headers
            assert "default-src 'none'" in answer.headers["content-security-policy"]
            assert failures(world)[-1] == reason
        metadata_failed = [r["reason"] for r in world.gw.audit("client.metadata_failed")]
        assert "the metadata document is larger than 5120 bytes" in metadata_failed

        # A registered client's redirect URIs are enforced the same way.
        registered = await http.post(
            f"{world.gw.url}/oauth/register",
            json={"redirect_uris": [world.redirect_uri], "token_endpoint_auth_method": "none", "client_name": "CLI"},
        )
        assert registered.status_code == 201
        dcr = registered.json()["client_id"]
        assert world.gw.audit("client.registered")[-1]["client_id"] == dcr
        answer = await http.get(authorize_url(world, dcr, redirect_uri="http://127.0.0.1:1/other"))
        assert answer.status_code == 400 and failures(world)[-1] == "redirect_uri is not one the client lists"


async def test_pkce_is_required_and_only_s256_is_accepted(tmp_path):
    async with sign_in_world(tmp_path) as world, httpx.AsyncClient() as http:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        for method, challenge in ((None, None), ("plain", "x" * 43)):
            url = authorize_url(world, client_id, method=method, challenge=challenge)
            if method is None:
                url = url.replace("code_challenge=", "ignored=")
            answer = await http.get(url)
            assert answer.status_code == 302
            location = httpx.URL(answer.headers["location"])
            assert str(location).startswith(world.redirect_uri)
            assert location.params["error"] == "invalid_request"
            assert location.params["state"] == "client-state" and location.params["iss"] == world.gw.url
        assert failures(world)[-2:] == [
            "PKCE is required: code_challenge with code_challenge_method S256",
            "code_challenge_method must be S256 (plain is refused)",
        ]


async def test_codes_are_single_use_short_lived_and_bound_to_client_verifier_and_redirect(tmp_path):
    async with (
        sign_in_world(tmp_path) as world,
        browser() as chromium,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{world.gw.port}") as http,
    ):
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        other = world.docs.add("/other/client.json", [world.redirect_uri], name="Other IDE")
        context = await chromium.new_context()

        consented: list[bool] = []

        async def code() -> tuple[str, str]:
            verifier, challenge = pkce()
            landing = await authorize_in_browser(
                chromium,
                authorize_url(world, client_id, challenge=challenge),
                world.callbacks,
                context=context,
                decision=None if consented else "approve",
            )
            consented.append(True)
            assert landing.params["state"] == "client-state", landing.url
            return landing.params["code"], verifier

        # A wrong verifier; then the same code is spent.
        first, verifier = await code()
        wrong = await redeem(http, first, pkce()[0], client_id, world.redirect_uri)
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        assert failures(world)[-1] == "code_verifier does not match the code_challenge (PKCE)"

        # Redeemed by another client.
        stolen, verifier = await code()
        answer = await redeem(http, stolen, verifier, other, world.redirect_uri)
        assert answer.status_code == 400 and failures(world)[-1] == "authorization code was issued to another client"

        # Expired (60 s).
        late, verifier = await code()
        world.gw.clock.advance(61)
        answer = await redeem(http, late, verifier, client_id, world.redirect_uri)
        assert answer.status_code == 400 and failures(world)[-1] == "authorization code unknown or expired"

        # Replayed: refused, and the session the first redemption opened is revoked.
        good, verifier = await code()
        redeemed = await redeem(http, good, verifier, client_id, world.redirect_uri)
        assert redeemed.status_code == 200, redeemed.text
        sid = redeemed.json()["session_id"]
        replay = await redeem(http, good, verifier, client_id, world.redirect_uri)
        assert replay.status_code == 400 and failures(world)[-1] == "authorization code replayed"
        session = await world.gw.gateway.store.get_session(sid)
        assert session is not None and session.state == "revoked"
        # The second sign-in and on were remembered consents: one consent.granted for the pair.
        assert len(world.gw.audit("consent.granted")) == 1

        # The pair's agent is an agent like any other: listed, and disabling it ends the next refresh.
        agent = "ide:alice@example.com:127.0.0.1"
        fresh, verifier = await code()
        tokens = (await redeem(http, fresh, verifier, client_id, world.redirect_uri)).json()
        listed = await cli(world.gw, "agents", "list")
        assert agent in listed
        await cli(world.gw, "agents", "disable", agent)
        refused = await http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "client_id": client_id, "refresh_token": tokens["refresh_token"]},
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        await cli(world.gw, "agents", "rotate", agent, status=1)
        await context.close()


async def test_a_state_mismatch_at_the_callback_is_refused_and_audited(tmp_path):
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(authorize_url(world, client_id))  # the sign-in starts; the IdP's login page shows
        await page.goto(f"{world.gw.url}/oauth/callback?code=forged&state=not-this-sign-in")
        assert "does not belong to the sign-in in progress" in await page.locator("#error").inner_text()
        assert failures(world)[-1] == "state mismatch at the callback"
        await context.close()


async def test_a_person_outside_the_templates_users_is_refused(tmp_path):
    async with sign_in_world(tmp_path, users=["alice@example.com"]) as world, browser() as chromium:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        landing = await authorize_in_browser(
            chromium, authorize_url(world, client_id), world.callbacks, email="bob@example.com", decision=None
        )  # refused before consent
        assert landing.params["error"] == "access_denied" and "code" not in landing.params
        assert failures(world)[-1] == "this person is not among the template's users"
        assert world.gw.audit("login.failed")[-1]["on_behalf_of"] == "bob@example.com"
        assert await world.gw.gateway.store.get_agent("ide:bob@example.com:127.0.0.1") is None


async def test_denying_consent_sends_access_denied_and_nothing_is_remembered(tmp_path):
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri])
        landing = await authorize_in_browser(
            chromium, authorize_url(world, client_id), world.callbacks, decision="deny"
        )
        assert landing.params["error"] == "access_denied"
        assert failures(world)[-1] == "consent denied" and world.gw.audit("consent.granted") == []


async def test_the_consent_page_escapes_the_clients_name_and_refuses_a_forged_post(tmp_path):
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        client_id = world.docs.add("/ide/client.json", [world.redirect_uri], name='<script>alert(1)</script>"')
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(authorize_url(world, client_id))
        await page.fill("#email", "alice@example.com")
        await page.fill("#password", "correct horse battery")
        await page.click("#submit")
        await page.locator("#approve").wait_for()
        assert await page.locator("#client-name").inner_text() == '<script>alert(1)</script>"'
        assert await page.locator("script").count() == 0
        assert await page.locator("#redirect-host").inner_text() == "127.0.0.1"
        # The same browser's cookie with a wrong CSRF token: refused.
        answer = await context.request.post(
            f"{world.gw.url}/oauth/consent", form={"csrf": "wrong", "decision": "approve"}
        )
        assert answer.status == 403
        assert failures(world)[-1] == "consent CSRF check failed"
        await context.close()


async def test_a_loopback_metadata_host_is_fetched_only_when_a_glob_names_it_literally(tmp_path):
    from gateway.config.files import ClientsSettings
    from gateway.login.cimd import ClientRefused, MetadataFetcher
    from tests.login.support import metadata_server

    async with metadata_server(tmp_path) as (docs, ca):
        url = docs.add("/ide/client.json", ["http://127.0.0.1:9/cb"])
        wildcard = MetadataFetcher(
            ClientsSettings.model_validate(
                {"metadata_documents": ["https://127.0.0.*/*"], "fetch": {"ca_file": str(ca)}}
            )
        )
        with pytest.raises(ClientRefused) as refused:
            await wildcard.get(url)
        assert "resolves to a private or loopback address" in refused.value.reason
        named = MetadataFetcher(
            ClientsSettings.model_validate(
                {"metadata_documents": [f"{docs.base}/ide/*"], "fetch": {"ca_file": str(ca)}}
            )
        )
        metadata, fetched = await named.get(url)
        assert fetched and metadata.redirect_uris == ("http://127.0.0.1:9/cb",)
        await wildcard.close()
        await named.close()
