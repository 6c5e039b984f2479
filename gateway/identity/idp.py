"""Humans' identity providers: verifying the subject token of an on-behalf-of exchange, and ID-JAGs.

Each provider in gateway.yaml `identity_providers` (and each platform in
`workload_issuers`, see workload.py) publishes its keys at a JWKS URL. Keys
are fetched asynchronously (never a blocking call on the event loop) and the
key set is cached for `jwks_cache` seconds. A token naming a `kid` the cached
set lacks triggers a refetch, at most once per `jwks_refresh_min` seconds per
provider, so a stream of made-up kids cannot turn the gateway into a flood
against the provider.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2 as httpx  # the HTTP client the MCP SDK already loads

from gateway.config.files import EMAIL, JwtIssuer
from gateway.errors import AuthError, Unavailable
from gateway.identity.jwks import select_key, token_header, unverified_claims, verify_jwt

log = logging.getLogger("gateway.idp")

_MAX_JWKS_BYTES = 1 << 20
_FETCH_TIMEOUT = 5.0
INVALID = "invalid_grant"
ID_JAG_TYPE = "oauth-id-jag+jwt"


@dataclass(frozen=True)
class Human:
    """A person the identity provider vouched for."""

    issuer: str
    subject: str
    email: str | None  # only when the provider says it is verified
    may_act: Any  # the token's may_act claim, if any (RFC 8693 §4.4)

    @property
    def principal(self) -> str:
        """How sessions and audit records name this person: the verified email, else `iss|sub`."""
        return self.email or f"{self.issuer}|{self.subject}"


class ProviderKeys:
    """One provider's published keys, fetched over HTTP and cached."""

    def __init__(self, provider: JwtIssuer, http: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        self.provider = provider
        self.http = http
        self.clock = clock
        self._keys: list[dict[str, Any]] | None = None
        self._fetched_at = float("-inf")
        self._lock = anyio.Lock()

    async def keys_for(self, kid: str | None) -> list[dict[str, Any]]:
        """The cached keys, refreshed when stale, or (rate-bounded) when `kid` is not among them.

        Raises:
            Unavailable: the provider's keys cannot be fetched and none are cached.
        """
        async with self._lock:
            now = self.clock()
            stale = now - self._fetched_at >= self.provider.jwks_cache
            unknown = self._keys is not None and not any(kid is None or k.get("kid") == kid for k in self._keys)
            if self._keys is None or stale or (unknown and now - self._fetched_at >= self.provider.jwks_refresh_min):
                await self._fetch(now)
            assert self._keys is not None
            return self._keys

    async def _fetch(self, now: float) -> None:
        try:
            async with self.http.stream("GET", self.provider.jwks_url, headers={"accept": "application/json"}) as resp:
                resp.raise_for_status()
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise ValueError("key set larger than 1 MiB")
            document = json.loads(body)
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError('not a JWK Set ({"keys": [...]})')
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "identity provider %s: cannot fetch keys from %s: %s", self.provider.issuer, self.provider.jwks_url, exc
            )
            if self._keys is None:
                raise Unavailable(f"identity provider {self.provider.issuer} keys unavailable") from None
            self._fetched_at = now  # keep the old keys; retry after the bound, not on every request
            return
        self._keys = [k for k in keys if isinstance(k, dict)]
        self._fetched_at = now


class JwtIssuers:
    """Verifies JWTs against the published keys of a group of configured issuers (one HTTP client for all)."""

    def __init__(self, issuers: tuple[JwtIssuer, ...], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.http: httpx.AsyncClient | None = None  # only with issuers to fetch from
        self.keys: dict[str, ProviderKeys] = {}
        if issuers:
            self.http = httpx.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=False)
            self.keys = {p.issuer: ProviderKeys(p, self.http, clock) for p in issuers}

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def verified(
        self,
        token: str,
        *,
        what: str,
        require: tuple[str, ...],
        audience: str | None = None,
        unlisted: str | None = None,
    ) -> tuple[JwtIssuer, dict[str, Any], dict[str, Any]]:
        """(issuer, header, claims) of a token one of the issuers signed; `audience` defaults to the issuer's;
        `unlisted` is the reason for an issuer not configured (by default, one made of `what`).

        The algorithm list is the issuer's, never the token's; `sub` must be a non-empty string.

        Raises:
            AuthError: (`invalid_grant`) unlisted issuer, bad signature or key, wrong audience, expired.
            Unavailable: the issuer's keys cannot be fetched.
        """
        issuer = unverified_claims(token, error=INVALID).get("iss")
        source = self.keys.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthError(unlisted or f"{what} issuer is not configured", error=INVALID)
        config = source.provider
        header = token_header(token, config.algorithms, error=INVALID)
        key = select_key(await source.keys_for(header.get("kid")), header, error=INVALID)
        claims = verify_jwt(
            token,
            key,
            header["alg"],
            audience=audience or config.audience,
            issuer=config.issuer,
            now=self.clock(),
            require=require,
            error=INVALID,
        )
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise AuthError(f"{what} sub claim malformed", error=INVALID)
        return config, header, claims


class IdentityProviders(JwtIssuers):
    """Verifies subject tokens and ID-JAGs against the configured providers (`identity_providers`)."""

    async def verify(self, token: str) -> Human:
        """The human a subject token names.

        Raises:
            AuthError: (`invalid_grant`) unlisted issuer, bad signature or key, wrong audience, expired.
            Unavailable: the provider's keys cannot be fetched.
        """
        provider, _, claims = await self.verified(
            token,
            what="subject_token",
            require=("iss", "sub", "aud", "exp"),
            unlisted="subject_token issuer is not a configured identity provider",
        )
        return _human(provider, claims)

    async def verify_id_jag(self, token: str, gateway_issuer: str) -> tuple[Human, dict[str, Any]]:
        """The human an ID-JAG names, and its claims: `typ` oauth-id-jag+jwt, `aud` this gateway, from an
        `id_jag: true` provider, with `client_id` and `jti` (the caller checks both).

        Raises:
            AuthError: (`invalid_grant`) any of those fails, or the checks of `verify`.
            Unavailable: the provider's keys cannot be fetched.
        """
        issuer = unverified_claims(token, error=INVALID).get("iss")
        source = self.keys.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthError("ID-JAG issuer is not a configured identity provider", error=INVALID)
        if not getattr(source.provider, "id_jag", False):
            raise AuthError("this identity provider may not issue ID-JAGs (id_jag: true)", error=INVALID)
        typ = token_header(token, source.provider.algorithms, error=INVALID).get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != ID_JAG_TYPE:
            raise AuthError(f"assertion typ must be {ID_JAG_TYPE}", error=INVALID)
        provider, _, claims = await self.verified(
            token,
            what="ID-JAG",
            audience=gateway_issuer,
            require=("iss", "sub", "aud", "exp", "iat", "jti", "client_id"),
        )
        aud = claims["aud"]
        if aud != gateway_issuer and aud != [gateway_issuer]:
            raise AuthError("ID-JAG audience must be exactly this gateway", error=INVALID)
        return _human(provider, claims), claims


def _human(provider: JwtIssuer, claims: dict[str, Any]) -> Human:
    email = claims.get("email")
    verified = claims.get("email_verified") in (True, "true")
    return Human(
        issuer=provider.issuer,
        subject=claims["sub"],
        email=email.lower() if verified and isinstance(email, str) and EMAIL.fullmatch(email) else None,
        may_act=claims.get("may_act"),
    )
