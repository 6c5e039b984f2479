"""The one way tests run `mcp-gateway`: in a worker thread with its own event loop, as a shell would."""

from __future__ import annotations

import contextlib
import io

import anyio

from gateway import cli


async def run_cli(*argv: str) -> tuple[int, str]:
    """Run the command; its exit status and what it printed on stdout."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(list(argv))

    status = await anyio.to_thread.run_sync(run)
    return status, out.getvalue()
