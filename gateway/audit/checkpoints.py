"""Signed checkpoints: the chain's head, signed with the gateway key and kept in the store too.

A checkpoint signs `{"gateway", "seq", "head"}` (canonical JSON) as a compact
JWS (EdDSA, header `kid`), so it verifies with public keys alone: the keys on
disk or a JWKS file. The checkpoint record in the file carries it, and the store
keeps the latest one per chain, so a file whose tail was cut off no longer
reaches the head the store vouches for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.events import Event
from gateway.canonical import chained
from gateway.identity.keys import ALGORITHM, KeyRing
from gateway.store.base import Store

EVENT = Event.AUDIT_CHECKPOINT

PublicKeys = Callable[[str], Ed25519PublicKey | None]  # kid -> key


class BadSignature(Exception):
    """A checkpoint's signature does not verify, or names a key nobody supplied."""


class UnknownKey(BadSignature):
    """Signed by a key the verifier does not have: nothing is known to be wrong, only unproven."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"signed by unknown key {kid!r}; supply its public key with --jwks")
        self.kid = kid


class Checkpoints:
    """Signs heads with the active gateway key and keeps the latest per chain in the store."""

    def __init__(self, keys: KeyRing, store: Store, *, every: int, interval: float) -> None:
        self.keys = keys
        self.store = store
        self.every = every  # records between checkpoints
        self.interval = interval  # seconds between checkpoints while records arrive

    def sign(self, instance: str, seq: int, head: str) -> dict[str, Any]:
        """The fields of a checkpoint record vouching that `head` is the hash of record `seq`."""
        kid, key = self.keys.sign_key()
        payload = chained({"gateway": instance, "head": head, "seq": seq})
        signature = jwt.api_jws.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": None})
        return {"head_seq": seq, "head": head, "kid": kid, "signature": signature}

    async def save(self, instance: str, signed: dict[str, Any], now: float) -> None:
        await self.store.put_checkpoint(instance, signed["head_seq"], signed["head"], signed["signature"], now)

    async def latest(self, instance: str) -> dict[str, Any] | None:
        return await self.store.get_checkpoint(instance)


def signed_head(signature: str, keys: PublicKeys) -> dict[str, Any]:
    """What a checkpoint signature vouches for: `{"gateway", "seq", "head"}`.

    Raises:
        BadSignature: malformed, signed by an unknown key, or not valid.
    """
    try:
        kid = jwt.get_unverified_header(signature).get("kid")
        key = keys(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownKey(kid if isinstance(kid, str) else None)
        payload = jwt.api_jws.decode(signature, key, algorithms=[ALGORITHM])
        claims = json.loads(payload)
    except jwt.PyJWTError as exc:
        raise BadSignature(f"signature does not verify: {exc}") from None
    except ValueError:
        raise BadSignature("signature payload is not JSON") from None
    if not isinstance(claims, dict) or set(claims) != {"gateway", "seq", "head"}:
        raise BadSignature("signature payload is not a checkpoint")
    return claims
