"""The one way tests run a helper server as a child process: start it, wait for its ready line, stop it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
from anyio.abc import Process

STARTUP_TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def serving(
    argv: Sequence[str],
    ready: bytes,
    *,
    env: Mapping[str, str],
    stream: str = "stderr",
    cwd: Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> AsyncIterator[Process]:
    """Run `argv` until the block ends, once `ready` has appeared on its `stream` ("stderr" or "stdout")."""
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: subprocess.PIPE}
    process = await anyio.open_process(list(argv), env=dict(env), cwd=cwd, **pipes)
    try:
        output = getattr(process, stream)
        assert output is not None
        seen = b""
        with anyio.fail_after(timeout):
            async for chunk in output:
                seen += chunk
                if ready in seen:
                    break
        yield process
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()
