"""Choosing the public key that may verify a JWT from a JWK Set.

Shared by client assertions (an agent's registered keys) and subject tokens
(an identity provider's published keys). The algorithm comes from the
verifier's fixed list, never from the key set or the token alone: the token's
`alg` must be on the list, a key that declares an `alg` must declare the same
one, and the key is built for that algorithm (so an RSA key can never verify
an HMAC token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jwt
from jwt import PyJWK

from gateway.errors import AuthError


def token_header(token: str, algorithms: Sequence[str], *, error: str) -> dict[str, Any]:
    """The unverified header, once its `alg` is known to be one of `algorithms`.

    Raises:
        AuthError: malformed, or an algorithm that is not accepted.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError("malformed JWT", error=error) from None
    if header.get("alg") not in algorithms:
        raise AuthError("JWT algorithm not accepted", error=error)
    return header


def unverified_claims(token: str, *, error: str) -> dict[str, Any]:
    """The claims before any check: only to find which keys to verify with.

    Raises:
        AuthError: not a JWT with a JSON object payload.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise AuthError("malformed JWT", error=error) from None
    return claims


def select_key(keys: Sequence[dict[str, Any]], header: dict[str, Any], *, error: str) -> Any:
    """The key among `keys` for this header's `kid` and `alg`.

    Without a `kid`, the set must hold exactly one usable key.

    Raises:
        AuthError: no key (or no single key) fits.
    """
    alg, kid = header["alg"], header.get("kid")
    usable = []
    for jwk in keys:
        if kid is not None and jwk.get("kid") != kid:
            continue
        if jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
            continue
        try:
            usable.append(PyJWK(jwk, alg).key)
        except (jwt.PyJWTError, ValueError, TypeError):  # a malformed key in a set is skipped, not fatal
            continue
    if len(usable) != 1:
        raise AuthError("no matching signing key" if not usable else "JWT names no kid", error=error)
    return usable[0]


CLOCK_SKEW = 60.0  # seconds a peer's clock may run ahead of ours (iat, nbf)


def verify_jwt(
    token: str, key: Any, alg: str, *, audience: str, issuer: str, now: float, require: Sequence[str], error: str
) -> dict[str, Any]:
    """Signature, `aud` (contains `audience`), `iss` (equals `issuer`), required claims and times against `now`.

    Raises:
        AuthError: any check fails; the reason names which.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": list(require)},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"JWT lacks the {exc.claim} claim", error=error) from None
    except jwt.InvalidAudienceError:
        raise AuthError("JWT audience not accepted", error=error) from None
    except jwt.InvalidIssuerError:
        raise AuthError("JWT issuer not accepted", error=error) from None
    except jwt.InvalidTokenError:
        raise AuthError("JWT signature invalid", error=error) from None
    exp, nbf, iat = claims.get("exp"), claims.get("nbf", 0), claims.get("iat", 0)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf, iat)):
        raise AuthError("JWT time claims malformed", error=error)
    if now >= exp:  # type: ignore[operator]
        raise AuthError("JWT expired", error=error)
    if nbf > now + CLOCK_SKEW or iat > now + CLOCK_SKEW:
        raise AuthError("JWT not valid yet", error=error)
    return claims
