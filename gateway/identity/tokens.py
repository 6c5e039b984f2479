"""Session tokens: `at+jwt` access tokens the gateway signs and verifies.

Verification pins everything an attacker could steer: the algorithm (EdDSA
only, never taken from the token), `typ`, the key (`kid` must name one of the
gateway's own keys), `aud` and `iss` (both exactly `public_url`), the time
claims (against the injected clock), and the presence of `sid`, `client_id`
and `jti`. Verified tokens are cached by the SHA-256 of the whole token, never
by `jti`, and the cache starts over whenever the key set changes (a rotation
ends the active key's unlimited validity); the session itself is still checked
in the store on every request.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.errors import AuthError
from gateway.identity.jwks import CLOCK_SKEW
from gateway.identity.keys import ALGORITHM, KeyRing

TOKEN_TYPE = "at+jwt"
# How an agent proved itself when a token was issued (the `credential` claim, and the audit field of every
# record its requests cause): a stored secret, a registered key, its platform's workload JWT, an ID-JAG (with
# the agent's own client authentication), a user's sign-in (reserved), or an operator's `sessions open`.
CREDENTIALS = frozenset({"secret", "private_key_jwt", "workload", "id_jag", "interactive", "operator"})
_REQUIRED = ("iss", "aud", "exp", "iat", "sid", "client_id", "sub", "jti")
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class TokenClaims:
    """What a verified session token says. The session record decides what it is worth."""

    sid: str
    agent: str  # client_id: the agent, always
    subject: str  # sub: the agent, or the human it acts for
    actor: str | None  # act.sub when delegated
    task: str | None
    grant: str | None
    issued_at: float
    expires_at: float
    jti: str
    raw: dict[str, Any]
    jkt: str | None = None  # cnf.jkt: the thumbprint of the DPoP key the token is bound to (RFC 9449)
    credential: str | None = None  # one of CREDENTIALS; None in tokens issued before the claim existed


class Tokens:
    """Issues and verifies session tokens for one `public_url`."""

    def __init__(self, keys: KeyRing, public_url: str, clock: Callable[[], float]) -> None:
        self.keys = keys
        self.issuer = public_url
        self.clock = clock
        self._cache: OrderedDict[bytes, tuple[TokenClaims, float]] = OrderedDict()  # claims, valid until
        self._generation = keys.generation  # the key set the cached entries were verified against

    def issue(
        self,
        *,
        sid: str,
        agent: str,
        expires_at: float,
        subject: str | None = None,
        task: str | None = None,
        grant: str | None = None,
        jkt: str | None = None,
        credential: str | None = None,
    ) -> tuple[str, str]:
        """Sign a session token; returns (token, jti).

        A `subject` other than the agent makes it a delegated token (RFC 8693 `act`); a `jkt` binds it to
        that DPoP key (`cnf`, RFC 9449 §6); `credential` (one of CREDENTIALS) says how the agent got it, so
        every request's audit records can say so without a store read.

        Raises:
            ValueError: `credential` is not one of CREDENTIALS.
        """
        if credential is not None and credential not in CREDENTIALS:
            raise ValueError(f"credential must be one of {', '.join(sorted(CREDENTIALS))}")
        now = self.clock()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.issuer,
            "client_id": agent,
            "sub": subject or agent,
            "sid": sid,
            "iat": int(now),
            "exp": int(expires_at),
            "jti": secrets.token_urlsafe(16),
        }
        if subject and subject != agent:
            claims["act"] = {"sub": agent}
        if task is not None:
            claims["task"] = task
        if grant is not None:
            claims["grant"] = grant
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        if credential is not None:
            claims["credential"] = credential
        kid, key = self.keys.sign_key()
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": TOKEN_TYPE})
        return token, claims["jti"]

    def verify(self, token: str) -> TokenClaims:
        """Verify a bearer token.

        Raises:
            AuthError: for any reason the token is not a live token of this gateway.
        """
        now = self.clock()
        if self._generation != self.keys.generation:  # a rotation or removal: re-check every key's overlap
            self._cache.clear()
            self._generation = self.keys.generation
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            claims, valid_until = cached
            if now >= valid_until:
                raise AuthError("token expired" if now >= claims.expires_at else "token signed by a retired key")
            return claims
        claims, valid_until = self._verify(token, now)
        self._cache[digest] = (claims, valid_until)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims

    def _verify(self, token: str, now: float) -> tuple[TokenClaims, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError("token algorithm not accepted")
        if header.get("typ") != TOKEN_TYPE:
            raise AuthError("token type must be at+jwt")
        kid = header.get("kid")
        key = self.keys.verify_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthError("token signed by an unknown key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=[ALGORITHM],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "require": list(_REQUIRED),
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise AuthError("token signature invalid") from None
        if payload["aud"] != self.issuer:
            raise AuthError("token audience is not this gateway")
        if payload["iss"] != self.issuer:
            raise AuthError("token issuer is not this gateway")
        exp, iat = payload["exp"], payload["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise AuthError("token time claims malformed")
        if now >= exp:
            raise AuthError("token expired")
        if iat > now + CLOCK_SKEW:
            raise AuthError("token issued in the future")
        if key.retired_at is not None and (iat > key.retired_at or key.verify_until is None or now >= key.verify_until):
            raise AuthError("token signed by a retired key")
        for name in ("sid", "client_id", "sub", "jti"):
            if not isinstance(payload[name], str) or not payload[name]:
                raise AuthError(f"token {name} claim malformed")
        act = payload.get("act")
        actor = act.get("sub") if isinstance(act, dict) else None
        if act is not None and actor != payload["client_id"]:
            raise AuthError("token act claim does not name its client")
        cnf = payload.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if cnf is not None and (not isinstance(jkt, str) or not jkt):
            raise AuthError("token cnf claim malformed")
        credential = payload.get("credential")
        if credential is not None and (not isinstance(credential, str) or credential not in CREDENTIALS):
            raise AuthError("token credential claim malformed")
        claims = TokenClaims(
            sid=payload["sid"],
            agent=payload["client_id"],
            subject=payload["sub"],
            actor=actor,
            task=payload.get("task"),
            grant=payload.get("grant"),
            issued_at=float(iat),
            expires_at=float(exp),
            jti=payload["jti"],
            raw=payload,
            jkt=jkt,
            credential=credential,
        )
        return claims, min(float(exp), key.verify_until if key.verify_until is not None else float("inf"))
