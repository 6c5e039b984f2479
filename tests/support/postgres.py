"""Throwaway PostgreSQL databases for tests, on the machine's cluster (127.0.0.1:5432, trust auth).

The cluster is GATEWAY_TEST_PG (default postgresql://postgres@127.0.0.1:5432). Without
one answering there, every test that needs it fails at once with one line saying so
(`require_server`), instead of a bare ConnectionRefusedError after asyncpg's minute.

`GATEWAY_TEST_STORE=postgres` runs harness gateways on PostgreSQL instead of
SQLite: each gateway directory gets a database of its own (a restart on the same
directory finds its sessions again, as it would find its SQLite file), dropped
once the test that used it has ended. Every database has a unique name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

SERVER = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
STORES = ("sqlite", "postgres")
_CONNECT_TIMEOUT = 2.0  # seconds: a cluster on this machine answers in milliseconds
_missing: list[str] = []  # the one-line reason, once the cluster was found missing (checked once per run)


def _address() -> tuple[str, int]:
    netloc = SERVER.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "5432")
    return host.strip("[]") or "127.0.0.1", int(port or 5432)


def require_server() -> None:
    """Fail the calling test with one line unless the PostgreSQL cluster accepts connections.

    Checked with a plain TCP connect, bounded, once per test run: every later test that needs it fails at once.
    """
    if not _missing:
        host, port = _address()
        try:
            socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT).close()
            _missing.append("")
        except OSError as exc:
            _missing.append(
                f"PostgreSQL is not reachable at {host}:{port} ({exc.strerror or exc}): these tests need it. Start it "
                "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set "
                "GATEWAY_TEST_PG=postgresql://USER@HOST:PORT (trust auth)"
            )
    if _missing[0]:
        pytest.fail(_missing[0], pytrace=False)


def needs_server(item: pytest.Item) -> bool:
    """Whether a collected test needs the cluster: the replica tests, a `postgres` parametrization, or every
    harness gateway under GATEWAY_TEST_STORE=postgres."""
    callspec = getattr(item, "callspec", None)
    return (
        "replicas" in item.path.parts
        or (callspec is not None and "postgres" in callspec.params.values())
        or store_under_test() == "postgres"
    )


def store_under_test() -> str:
    """The backend harness gateways use: GATEWAY_TEST_STORE, sqlite by default."""
    store = os.environ.get("GATEWAY_TEST_STORE", "sqlite")
    if store not in STORES:
        raise ValueError(f"GATEWAY_TEST_STORE={store!r}: expected one of {', '.join(STORES)}")
    return store


async def admin(sql: str, *args: object) -> str:
    """Run one statement on the cluster's maintenance database."""
    require_server()
    con = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        return await con.execute(sql, *args)
    finally:
        await con.close()


async def _create() -> str:
    name = f"gw_test_{os.getpid()}_{secrets.token_hex(4)}"
    await admin(f'CREATE DATABASE "{name}"')
    return name


async def _drop(*names: str) -> None:
    for name in names:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A new, empty database; yields its DSN and drops it on exit (closing whatever is still connected)."""
    name = await _create()
    try:
        yield f"{SERVER}/{name}"
    finally:
        await _drop(name)


@dataclass
class _Used:
    name: str
    users: int = 0


_by_root: dict[Path, _Used] = {}


@contextlib.asynccontextmanager
async def database_for(root: Path) -> AsyncIterator[str]:
    """The database of a gateway directory, created on first use and kept until `drop_idle`."""
    if root not in _by_root:
        _by_root[root] = _Used(await _create())
    used = _by_root[root]
    used.users += 1
    try:
        yield f"{SERVER}/{used.name}"
    finally:
        used.users -= 1


def drop_idle(*, everything: bool = False) -> None:
    """Drop the databases no running gateway uses (after each test), or all of them (at the end)."""
    idle = [root for root, used in _by_root.items() if everything or used.users == 0]
    if idle:
        names = [_by_root.pop(root).name for root in idle]
        with ThreadPoolExecutor(1) as worker:  # its own event loop, whatever the caller's thread runs
            worker.submit(anyio.run, _drop, *names).result()
