"""Agent secrets: 256-bit random values, shown once, stored as a keyed hash.

HMAC-SHA-256 under a gateway key, compared in constant time. A slow KDF buys
nothing for random secrets and would cost CPU on an unauthenticated endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "mgw_"


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(key: bytes, secret: str) -> str:
    return "hmac-sha256:" + hmac.new(key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def verify_secret(key: bytes, secret: str, stored: str | None) -> bool:
    """Constant-time comparison; False when the agent has no secret."""
    expected = hash_secret(key, secret)
    return hmac.compare_digest(expected, stored or "hmac-sha256:" + "0" * 64) and stored is not None
