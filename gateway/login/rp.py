"""The gateway as a confidential OpenID Connect relying party of the company's identity provider.

Authorization code flow with PKCE (S256) and a `nonce`; the endpoints come from the provider's
discovery document (whose `issuer` must be the configured one); the code is redeemed with
client_secret_basic; the ID token is verified with the provider's published keys (`jwks_url`), the
algorithm pinned by the provider's `algorithms`, `aud` the gateway's client_id, `iss` the provider,
and its `nonce` the one this sign-in sent. No password ever reaches the gateway.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import httpx2 as httpx

from gateway.config.files import IdentityProvider, OidcClient
from gateway.errors import AuthError, Unavailable
from gateway.identity.idp import Human, IdentityProviders, _human

_DISCOVERY_TTL = 3600.0
_MAX_BYTES = 1 << 20
_TIMEOUT = 10.0


class LoginFailed(Exception):
    """The sign-in at the identity provider did not prove who the human is; `reason` goes to the audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RelyingParty:
    def __init__(
        self,
        provider: IdentityProvider,
        idps: IdentityProviders,
        redirect_uri: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert provider.oidc is not None
        self.provider = provider
        self.oidc: OidcClient = provider.oidc
        self.idps = idps
        self.redirect_uri = redirect_uri
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False, trust_env=False)
        self._discovery: tuple[float, dict[str, Any]] | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def discovery(self) -> dict[str, Any]:
        """The provider's discovery document (cached an hour).

        Raises:
            Unavailable: it cannot be fetched, or is not this provider's.
        """
        now = self.clock()
        if self._discovery is not None and now < self._discovery[0]:
            return self._discovery[1]
        url = self.oidc.discovery_url or f"{self.provider.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            response = await self._http.get(url, headers={"accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > _MAX_BYTES:
                raise ValueError("discovery document larger than 1 MiB")
            document = json.loads(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(f"identity provider discovery failed: {type(exc).__name__}") from None
        if not isinstance(document, dict) or document.get("issuer") != self.provider.issuer:
            raise Unavailable("identity provider discovery document names another issuer")
        for name in ("authorization_endpoint", "token_endpoint"):
            if not isinstance(document.get(name), str):
                raise Unavailable(f"identity provider discovery document lacks {name}")
        self._discovery = (now + _DISCOVERY_TTL, document)
        return document

    async def authorization_url(self, *, state: str, nonce: str, verifier: str) -> str:
        """Where the browser goes to sign in.

        Raises:
            Unavailable: discovery failed.
        """
        from authlib.oauth2.rfc7636 import create_s256_code_challenge  # at the first sign-in (grants.py says why)

        document = await self.discovery()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.oidc.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(self.oidc.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = document["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def redeem(self, code: str, *, verifier: str, nonce: str) -> Human:
        """The human the provider vouches for, from the code it sent back.

        Raises:
            LoginFailed: the code was refused, or the ID token does not verify (signature, iss, aud, nonce).
            Unavailable: the provider or its keys cannot be reached.
        """
        document = await self.discovery()
        basic = (quote(self.oidc.client_id, safe=""), quote(self.oidc.client_secret, safe=""))
        try:
            response = await self._http.post(
                document["token_endpoint"],
                auth=basic,
                headers={"accept": "application/json"},
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.redirect_uri,
                    "code_verifier": verifier,
                },
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"identity provider token endpoint unreachable: {type(exc).__name__}") from None
        try:
            answer = json.loads(response.content[:_MAX_BYTES])
        except (UnicodeDecodeError, ValueError):
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise LoginFailed(f"the identity provider refused the code ({error or response.status_code})")
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise LoginFailed("the identity provider sent no ID token")
        human = await self.verify_id_token(id_token, nonce)
        access_token = answer.get("access_token")
        if human.email is None and isinstance(access_token, str) and document.get("userinfo_endpoint"):
            human = await self._userinfo(document["userinfo_endpoint"], access_token, human)
        return human

    async def _userinfo(self, endpoint: str, access_token: str, human: Human) -> Human:
        """OIDC Core §5.3: the email the ID token left out (many providers put it only here); `sub` must match."""
        try:
            response = await self._http.get(
                endpoint, headers={"authorization": f"Bearer {access_token}", "accept": "application/json"}
            )
            claims = json.loads(response.content[:_MAX_BYTES]) if response.status_code == 200 else None
        except (httpx.HTTPError, UnicodeDecodeError, ValueError):
            claims = None
        if not isinstance(claims, dict) or claims.get("sub") != human.subject:
            return human
        found = _human(self.provider, {**claims, "sub": human.subject})
        return Human(human.issuer, human.subject, found.email, human.may_act)

    async def verify_id_token(self, id_token: str, nonce: str) -> Human:
        """Raises LoginFailed unless the ID token is this provider's, for this gateway, for this sign-in."""
        try:
            provider, _, claims = await self.idps.verified(
                id_token,
                what="ID token",
                audience=self.oidc.client_id,
                require=("iss", "sub", "aud", "exp", "iat", "nonce"),
                unlisted="ID token issuer is not the login identity provider",
            )
        except AuthError as exc:
            raise LoginFailed(f"ID token refused: {exc.reason}") from None
        if provider.issuer != self.provider.issuer:
            raise LoginFailed("ID token issuer is not the login identity provider")
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.oidc.client_id:
            raise LoginFailed("ID token azp is not the gateway's client_id")
        if not isinstance(claims["nonce"], str) or not hmac.compare_digest(claims["nonce"], nonce):
            raise LoginFailed("ID token nonce is not this sign-in's")
        return _human(provider, claims)
