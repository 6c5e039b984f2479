"""Small real HTTP servers on loopback for tests: a Starlette app on a free port, and old store schemas."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import uvicorn
from starlette.types import ASGIApp

from gateway.store.sqlite_schema import MIGRATIONS, statements


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, tls: tuple[Path, Path] | None = None) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port until the block ends; yields its base URL. With `tls` (a certificate
    and its key) it serves HTTPS.

    The socket listens before the server starts, so requests that arrive early queue in the backlog.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    certs = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls is not None else {}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", **certs))
    with sock:  # closed even if the server never started (it closes it only once it has)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            try:
                yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True


def sqlite_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite store file as a release with only the first `version` migrations left it (to test upgrades)."""
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        for statement in statements(script):
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    return db
