"""A real stdio MCP server that tries to reach what a tool server must not: the sandbox's adversary.

- `attempt(paths, mode)` opens each path (`read`, `append`, `create` or `list`) and
  answers "ok" or the errno name for each, so a test sees exactly what the kernel refused;
- `where()` answers its working directory and temp directory;
- `signal(pid)` checks whether it may send a signal to `pid` (signal 0: nothing is delivered).
"""

from __future__ import annotations

import errno
import os
import tempfile

from mcp.server.mcpserver import MCPServer

server = MCPServer("escape")


def _try(path: str, mode: str) -> str:
    try:
        if mode == "list":
            os.listdir(path)
        elif mode == "create":
            with open(path, "x") as handle:
                handle.write("written by the escape server\n")
        else:
            with open(path, "a" if mode == "append" else "r") as handle:
                handle.read() if mode == "read" else handle.write("")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


@server.tool()
def attempt(paths: list[str], mode: str = "read") -> dict[str, str]:
    """Open each path in this mode; answer ok or the errno name for each."""
    return {path: _try(path, mode) for path in paths}


@server.tool()
def where() -> dict[str, str]:
    """This process's working directory and temp directory."""
    return {"cwd": os.getcwd(), "tmp": tempfile.gettempdir()}


@server.tool()
def signal(pid: int) -> str:
    """Whether this process may signal `pid`: ok or the errno name."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


if __name__ == "__main__":
    server.run("stdio")
