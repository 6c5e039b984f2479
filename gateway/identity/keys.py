"""The gateway's signing keys: one active Ed25519 key, older ones kept for overlap.

The active key lives at `signing_key` (generated on first run, mode 0600). A
rotation moves it to `<signing_key>.retired/<kid>.pem` with a note of when it
was retired and how long its tokens may still be verified; tokens it signed
keep working until they expire, and it never verifies a token issued after
its retirement. Processes that share the files (the CLI, replicas) pick up a
rotation on their next refresh (at most once a second) or on an unknown `kid`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.canonical import ascii_canonical
from gateway.config.dirs import private_dir
from gateway.errors import ConfigError

ALGORITHM = "EdDSA"
_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class VerifyKey:
    kid: str
    public: Ed25519PublicKey
    retired_at: float | None = None  # None: the active key
    verify_until: float | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}


def thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint: the key id."""
    canonical = ascii_canonical(public_jwk(public))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def private_pem(key: Ed25519PrivateKey) -> bytes:
    encoding, private = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private, serialization.NoEncryption())


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    private_dir(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem(key))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_private(pem: bytes, where: str) -> Ed25519PrivateKey:
    """Raises ConfigError naming `where` unless `pem` is an Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot load the signing key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}: the signing key must be an Ed25519 private key")
    return key


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot load the signing key: {exc}") from None
    return load_private(pem, str(path))


class KeyRing:
    """Signs with the active key; verifies with the active and still-overlapping retired keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.retired_dir = path.with_name(path.name + ".retired")
        self._active: Ed25519PrivateKey | None = None
        self.active_kid = ""
        self._verify: dict[str, VerifyKey] = {}
        self._stamp: tuple[float, float] | None = None
        self._checked = 0.0
        self.generation = 0  # bumped whenever the key set is (re)installed: verified-token caches start over

    def load(self, *, create: bool = True) -> None:
        """Load the keys from disk, generating the active key on first run.

        Raises:
            ConfigError: the key file exists but cannot be used.
        """
        if not self.path.exists():
            if not create:
                raise ConfigError(f"{self.path}: no signing key yet (start the gateway once to create it)")
            _write_private(self.path, Ed25519PrivateKey.generate())
        self._load()

    def _load(self) -> None:
        retired = []
        if self.retired_dir.is_dir():
            for note in self.retired_dir.glob("*.json"):
                meta = json.loads(note.read_text())
                pem = note.with_suffix(".pem")
                if pem.exists():
                    public = _read_private(pem).public_key()
                    retired.append(VerifyKey(meta["kid"], public, meta["retired_at"], meta["verify_until"]))
        self._install(_read_private(self.path), retired)
        self._stamp = self._disk_stamp()

    def _install(self, active: Ed25519PrivateKey, retired: list[VerifyKey]) -> None:
        kid = thumbprint(active.public_key())
        keys = {kid: VerifyKey(kid, active.public_key())}
        keys.update((key.kid, key) for key in retired if key.kid != kid)
        self._active, self.active_kid, self._verify = active, kid, keys
        self.generation += 1

    def _disk_stamp(self) -> tuple[float, float]:
        retired = self.retired_dir.stat().st_mtime if self.retired_dir.exists() else 0.0
        return (self.path.stat().st_mtime, retired)

    def refresh(self, *, force: bool = False) -> None:
        """Reload if another process rotated the keys (checked at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._checked < _REFRESH_SECONDS:
            return
        self._checked = now
        try:
            if self._disk_stamp() != self._stamp:
                self._load()
        except OSError:
            pass  # keep serving with the keys already loaded

    async def sync(self) -> None:
        """Pick up a rotation made by another process (the gateway calls this every second)."""
        self.refresh()

    def sign_key(self) -> tuple[str, Ed25519PrivateKey]:
        self.refresh()
        assert self._active is not None, "KeyRing.load() first"
        return self.active_kid, self._active

    def verify_key(self, kid: str) -> VerifyKey | None:
        key = self._verify.get(kid)
        if key is None:
            self.refresh(force=False)
            key = self._verify.get(kid)
        return key

    def jwks(self, now: float) -> dict[str, Any]:
        """The public keys that may still verify a live token."""
        self.refresh()
        keys = [
            {**public_jwk(k.public), "kid": k.kid, "alg": ALGORITHM, "use": "sig"}
            for k in self._verify.values()
            if k.verify_until is None or k.verify_until > now
        ]
        return {"keys": keys}

    def rotate(self, now: float, overlap: float) -> str:
        """Make a new active key; the old one verifies its tokens for `overlap` seconds more."""
        self.load()
        old = self._active
        assert old is not None
        old_kid = self.active_kid
        private_dir(self.retired_dir)
        _write_private(self.retired_dir / f"{old_kid}.pem", old)
        note = {"kid": old_kid, "retired_at": now, "verify_until": now + overlap}
        (self.retired_dir / f"{old_kid}.json").write_text(json.dumps(note))
        for stale in self.retired_dir.glob("*.json"):  # forget keys whose overlap has passed
            meta = json.loads(stale.read_text())
            if meta["verify_until"] < now:
                stale.with_suffix(".pem").unlink(missing_ok=True)
                stale.unlink()
        _write_private(self.path, Ed25519PrivateKey.generate())
        self._load()
        return self.active_kid
