"""Throwaway PostgreSQL databases for tests, on the machine's cluster (127.0.0.1:5432, trust auth).

`GATEWAY_TEST_STORE=postgres` runs harness gateways on a fresh database each
instead of SQLite. Each database has a unique name and is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg

SERVER = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
STORES = ("sqlite", "postgres")


def store_under_test() -> str:
    """The backend harness gateways use: GATEWAY_TEST_STORE, sqlite by default."""
    store = os.environ.get("GATEWAY_TEST_STORE", "sqlite")
    if store not in STORES:
        raise ValueError(f"GATEWAY_TEST_STORE={store!r}: expected one of {', '.join(STORES)}")
    return store


async def admin(sql: str, *args: object) -> str:
    """Run one statement on the cluster's maintenance database."""
    con = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        return await con.execute(sql, *args)
    finally:
        await con.close()


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A new, empty database; yields its DSN and drops it on exit (closing whatever is still connected)."""
    name = f"gw_test_{os.getpid()}_{secrets.token_hex(4)}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
