"""Opaque, authenticated, expiring envelopes (AES-256-GCM) for state handed to clients.

Used for the 2026-07-28 `requestState` of an interrupted tools/call: the client
only ever echoes it back; the gateway opens it and checks it belongs to the
caller's session before it acts on it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.canonical import envelope_body
from gateway.config.dirs import private_dir

_PREFIX = b"gw1"


class InvalidEnvelope(ValueError):
    """The envelope is malformed, forged, expired, or not this gateway's."""


def load_key(path: Path) -> bytes:
    """A 32-byte secret kept under the state dir, created on first use (mode 0600)."""
    if not path.exists():
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path}: expected a 32-byte key")
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, payload: dict[str, Any], expires_at: float) -> str:
        nonce = os.urandom(12)
        body = envelope_body({**payload, "exp": expires_at})
        sealed = self._aead.encrypt(nonce, body, _PREFIX)
        return base64.urlsafe_b64encode(_PREFIX + nonce + sealed).decode().rstrip("=")

    def open(self, token: str, now: float) -> dict[str, Any]:
        """Raises InvalidEnvelope for anything this gateway did not seal, or that has expired."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise InvalidEnvelope("malformed") from None
        if len(raw) < len(_PREFIX) + 12 + 16 or not raw.startswith(_PREFIX):
            raise InvalidEnvelope("malformed")
        nonce, sealed = raw[len(_PREFIX) : len(_PREFIX) + 12], raw[len(_PREFIX) + 12 :]
        try:
            payload: dict[str, Any] = json.loads(self._aead.decrypt(nonce, sealed, _PREFIX))
        except (InvalidTag, ValueError):
            raise InvalidEnvelope("not sealed by this gateway") from None
        if not isinstance(payload.get("exp"), int | float) or now >= payload["exp"]:
            raise InvalidEnvelope("expired")
        return payload
