"""One view's MCP transport: the SDK's streamable-HTTP session managers, chosen per request.

A 2026-07-28 request that asks for nothing to be streamed (no progress token, no
log-level opt-in, not a `subscriptions/listen`) is answered as plain JSON by a
manager in JSON mode; everything else — handshake-era sessions, their GET
streams, and streaming 2026-07-28 requests — goes to the SSE manager. The JSON
path spares the SSE machinery a task pair and a memory stream per call, which is
most of what a tools/call costs the transport.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import DEFAULT_MAX_REQUEST_BODY_SIZE, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import LOG_LEVEL_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Message, Receive, Scope, Send

from gateway.http.resumable import ResumableSessionManager

_MODERN = frozenset(v.encode() for v in MODERN_PROTOCOL_VERSIONS)


class McpEndpoint:
    """ASGI app for one MCP path."""

    def __init__(self, server: Server[Any], security: TransportSecuritySettings) -> None:
        # Handshake-era sessions' SSE streams are resumable (priming event, retry, Last-Event-ID):
        # gateway/http/resumable.py.
        self.streaming = ResumableSessionManager(app=server, json_response=False, security_settings=security)
        self.plain = StreamableHTTPSessionManager(app=server, json_response=True, security_settings=security)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.streaming.run(), self.plain.run():
            yield

    # The SDK offers no public way to end a session server-side or to ask whether one still exists; both use its
    # session table (`_server_instances`) and `_discard_session`, the path its own DELETE and idle timeout take.

    def has_session(self, mcp_session: str) -> bool:
        """Whether the SDK still serves this handshake-era session (its idle timeout ends them unannounced)."""
        return any(mcp_session in manager._server_instances for manager in (self.streaming, self.plain))

    async def terminate(self, mcp_session: str) -> None:
        """End an MCP session server-side: its id answers 404 from now on and it no longer counts against the
        SDK's session cap; its server task winds down."""
        for manager in (self.streaming, self.plain):
            transport = manager._server_instances.get(mcp_session)
            if transport is not None:
                await manager._discard_session(mcp_session, transport)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if (
            scope["method"] == "POST"
            and headers.get(b"mcp-protocol-version") in _MODERN
            and length.isdigit()
            and int(length) <= DEFAULT_MAX_REQUEST_BODY_SIZE
        ):
            body, receive = await _buffered(receive)
            if body is not None and _needs_no_stream(body):
                await self.plain.handle_request(scope, receive, send)
                return
        await self.streaming.handle_request(scope, receive, send)


async def _buffered(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the whole body, and a `receive` that hands it over again."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: let the SDK see that
            return None, _replay([message], receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(chunks)
            return body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


def _needs_no_stream(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False  # the SSE manager answers the parse error, as for any request
    if not isinstance(message, dict) or message.get("method") == "subscriptions/listen":
        return False
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return not isinstance(meta, dict) or ("progressToken" not in meta and LOG_LEVEL_META_KEY not in meta)
