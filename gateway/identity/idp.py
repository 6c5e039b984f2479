"""Humans' identity providers: verifying the subject token of an on-behalf-of exchange.

Each provider in gateway.yaml `identity_providers` publishes its keys at a
JWKS URL. Keys are fetched asynchronously (never a blocking call on the event
loop) and the key set is cached for `jwks_cache` seconds. A token naming a
`kid` the cached set lacks triggers a refetch, at most once per
`jwks_refresh_min` seconds per provider, so a stream of made-up kids cannot
turn the gateway into a flood against the provider.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2 as httpx  # the HTTP client the MCP SDK already loads

from gateway.config import EMAIL, IdentityProvider
from gateway.errors import AuthError, Unavailable
from gateway.identity.jwks import select_key, token_header, unverified_claims, verify_jwt

log = logging.getLogger("gateway.idp")

_MAX_JWKS_BYTES = 1 << 20
_FETCH_TIMEOUT = 5.0
INVALID = "invalid_grant"


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

    def __init__(self, provider: IdentityProvider, http: httpx.AsyncClient, clock: Callable[[], float]) -> None:
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
            log.warning("identity provider %s: cannot fetch keys from %s: %s", self.provider.issuer,
                        self.provider.jwks_url, exc)
            if self._keys is None:
                raise Unavailable(f"identity provider {self.provider.issuer} keys unavailable") from None
            self._fetched_at = now  # keep the old keys; retry after the bound, not on every request
            return
        self._keys = [k for k in keys if isinstance(k, dict)]
        self._fetched_at = now


class IdentityProviders:
    """Verifies subject tokens against the configured providers."""

    def __init__(self, providers: tuple[IdentityProvider, ...], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.http: httpx.AsyncClient | None = None  # only with providers to fetch from
        self.keys: dict[str, ProviderKeys] = {}
        if providers:
            self.http = httpx.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=False)
            self.keys = {p.issuer: ProviderKeys(p, self.http, clock) for p in providers}

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def verify(self, token: str) -> Human:
        """The human a subject token names.

        Raises:
            AuthError: (`invalid_grant`) unlisted issuer, bad signature or key, wrong audience, expired.
            Unavailable: the provider's keys cannot be fetched.
        """
        issuer = unverified_claims(token, error=INVALID).get("iss")
        source = self.keys.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthError("subject_token issuer is not a configured identity provider", error=INVALID)
        provider = source.provider
        header = token_header(token, provider.algorithms, error=INVALID)
        key = select_key(await source.keys_for(header.get("kid")), header, error=INVALID)
        claims = verify_jwt(
            token, key, header["alg"], audience=provider.audience, issuer=provider.issuer, now=self.clock(),
            require=("iss", "sub", "aud", "exp"), error=INVALID,
        )
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("subject_token sub claim malformed", error=INVALID)
        email = claims.get("email")
        verified = claims.get("email_verified") in (True, "true")
        return Human(
            issuer=provider.issuer,
            subject=subject,
            email=email.lower() if verified and isinstance(email, str) and EMAIL.fullmatch(email) else None,
            may_act=claims.get("may_act"),
        )
