"""Store backends behind role Protocols (base.py); `open_store` picks one from the config URL.

Imports config/, errors.py and, for the SQL backends, spend/limits.py (the budget rules, which
import nothing of the store but its records).
"""

from __future__ import annotations

from gateway.config.files import GatewayConfig
from gateway.store.base import AgentRecord, Reservation, SessionRecord, SessionState, Store

__all__ = ["AgentRecord", "Reservation", "SessionRecord", "SessionState", "Store", "open_store"]


def open_store(config: GatewayConfig) -> Store:
    """The configured backend, not yet opened."""
    if config.store_is_sqlite:
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(config.sqlite_path)
    from gateway.store.postgres import PostgresStore

    return PostgresStore(config.store)
