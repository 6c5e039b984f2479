"""The HTTP client for streamable-HTTP upstreams (and the tests' clients).

The SDK's transports take an `httpx2.AsyncClient`; its own factory is private, so this is the
public-API equivalent: the same timeouts (30 s to connect, write and pool; 300 s to read, since a
server may hold a response stream open) and no redirect following.
"""

from __future__ import annotations

import httpx2

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0


def mcp_http_client(headers: dict[str, str] | None = None, auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
    """A client for one MCP endpoint; enter it as a context manager so its connections close."""
    return httpx2.AsyncClient(
        headers=headers, auth=auth, timeout=httpx2.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT), follow_redirects=False
    )
