"""The relying party refuses an ID token with a wrong nonce, audience or issuer, or signed by another key.

The real IdP never mints such tokens, so these are signed here and verified against a real JWKS endpoint."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.files import IdentityProvider
from gateway.identity.idp import IdentityProviders
from gateway.login.cimd import _public
from gateway.login.rp import LoginFailed, RelyingParty
from tests.identity.support import IdP, identity_provider

pytestmark = pytest.mark.anyio


def party(idp: IdP, *others: IdP) -> tuple[RelyingParty, IdentityProviders]:
    def entry(p: IdP, oidc: bool) -> IdentityProvider:
        extra = {"oidc": {"client_id": "mcp-gateway", "client_secret": "s"}} if oidc else {}
        return IdentityProvider.model_validate({**p.config(), "algorithms": ["RS256"], **extra})

    providers = (entry(idp, True), *(entry(o, False) for o in others))
    idps = IdentityProviders(providers, time.time)
    return RelyingParty(providers[0], idps, "http://127.0.0.1:1/oauth/callback"), idps


async def test_a_valid_id_token_names_the_human():
    async with identity_provider(issuer="http://127.0.0.1/idp", audience="mcp-gateway") as idp:
        rp, idps = party(idp)
        human = await rp.verify_id_token(idp.sign(nonce="n-1"), "n-1")
        assert human.principal == "carol@example.com"
        await idps.close()
        await rp.close()


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nonce": "another sign-in's"}, "ID token nonce is not this sign-in's"),
        ({"nonce": None}, "ID token refused: JWT lacks the nonce claim"),
        ({"nonce": "n-1", "aud": "some-other-client"}, "ID token refused: JWT audience not accepted"),
        (
            {"nonce": "n-1", "iss": "http://127.0.0.1/not-the-idp"},
            "ID token refused: ID token issuer is not the login identity provider",
        ),
    ],
)
async def test_an_id_token_for_another_sign_in_client_or_issuer_is_refused(claims, reason):
    async with identity_provider(issuer="http://127.0.0.1/idp", audience="mcp-gateway") as idp:
        rp, idps = party(idp)
        with pytest.raises(LoginFailed) as refused:
            await rp.verify_id_token(idp.sign(**claims), "n-1")
        assert refused.value.reason == reason
        await idps.close()
        await rp.close()


async def test_an_id_token_from_another_configured_provider_is_refused():
    async with (
        identity_provider(issuer="http://127.0.0.1/idp") as idp,
        identity_provider(issuer="http://127.0.0.1/other") as other,
    ):
        rp, idps = party(idp, other)
        with pytest.raises(LoginFailed) as refused:
            await rp.verify_id_token(other.sign(nonce="n-1", aud="mcp-gateway"), "n-1")
        assert refused.value.reason == "ID token issuer is not the login identity provider"
        await idps.close()
        await rp.close()


PRIVATE = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
]


@given(st.sampled_from(PRIVATE).flatmap(lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i])))
def test_no_private_loopback_or_link_local_address_counts_as_public(address):
    # The SSRF rule of metadata document fetches; IPv4-mapped IPv6 forms of them too.
    assert not _public(str(address))
    if address.version == 4:
        assert not _public(f"::ffff:{address}")
