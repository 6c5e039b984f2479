"""Where the gateway's keys live: files for one process, the shared store for replicas.

With SQLite the signing key set and the secrets (credential HMAC, audit
fingerprints, sealed requestState) are files under the state dir. Replicas on
one PostgreSQL database keep them in the store instead, so every replica signs,
verifies, hashes and seals with the same keys and none needs a shared disk.
The first replica to start creates them; the others read them.

The key ring's API is synchronous (loading and rotating are rare), so a stored
ring loads through `PostgresStore.run_blocking`; the gateway calls `sync()`
every second and whenever the store reports a rotation.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.files import GatewayConfig
from gateway.errors import ConfigError
from gateway.identity.keys import KeyRing, VerifyKey, load_private, private_pem, thumbprint
from gateway.identity.sealing import load_key
from gateway.store.base import StoredKey

if TYPE_CHECKING:
    from gateway.store import Store
    from gateway.store.postgres import PostgresStore

SECRETS = ("credential", "fingerprint", "state")  # files <state_dir>/<name>.key with SQLite


def key_ring(config: GatewayConfig, store: Store) -> KeyRing:
    """The signing key ring, not loaded yet: the `signing_key` files, or the store's keys with PostgreSQL."""
    if config.store_is_sqlite:
        return KeyRing(config.signing_key)
    return StoredKeyRing(_postgres(store), config)


def shared_secrets(config: GatewayConfig, store: Store) -> dict[str, bytes]:
    """The 32-byte secrets by name: files under the state dir, or the store's with PostgreSQL.

    Raises:
        StoreUnavailable: they live in the store and it cannot be reached.
    """
    if config.store_is_sqlite:
        return {name: load_key(config.state_dir / f"{name}.key") for name in SECRETS}
    candidates = {name: os.urandom(32) for name in SECRETS}
    return _postgres(store).run_blocking(lambda s: s.secrets(candidates))


def _postgres(store: Store) -> PostgresStore:
    from gateway.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    return store


def _stored(key: Ed25519PrivateKey) -> StoredKey:
    return StoredKey(thumbprint(key.public_key()), private_pem(key))


class StoredKeyRing(KeyRing):
    """The signing key set in the shared store. `signing_key` (the file) is not used."""

    def __init__(self, store: PostgresStore, config: GatewayConfig) -> None:
        super().__init__(config.signing_key)
        self.store = store
        self._loaded: list[StoredKey] = []
        self._stored_generation = 0

    def load(self, *, create: bool = True) -> None:
        candidate = _stored(Ed25519PrivateKey.generate()) if create else None
        self._apply(self.store.run_blocking(lambda s: s.signing_keys(candidate)))

    def refresh(self, *, force: bool = False) -> None:
        if force:
            self.load(create=False)

    async def sync(self) -> None:
        self._apply(await self.store.signing_keys(None))

    def rotate(self, now: float, overlap: float) -> str:
        new = _stored(Ed25519PrivateKey.generate())
        self.store.run_blocking(lambda s: s.rotate_signing_key(new, now, overlap))
        self.load(create=False)
        return self.active_kid

    def _apply(self, keys: list[StoredKey]) -> None:
        active = [k for k in keys if k.retired_at is None]
        if not active:
            raise ConfigError("the store holds no signing key yet (start the gateway once to create it)")
        if keys == self._loaded or active[0].generation < self._stored_generation:
            return  # unchanged, or read before a rotation this process has already loaded
        retired = [
            VerifyKey(k.kid, load_private(k.pem, f"signing key {k.kid}").public_key(), k.retired_at, k.verify_until)
            for k in keys
            if k.retired_at is not None
        ]
        self._install(load_private(active[0].pem, f"signing key {active[0].kid}"), retired)
        self._loaded, self._stored_generation = keys, active[0].generation
