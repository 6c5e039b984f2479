"""One view's MCP transport: the SDK's streamable-HTTP session managers, chosen per request.

A 2026-07-28 request that asks for nothing to be streamed (no progress token, no
log-level opt-in, not a `subscriptions/listen`) is answered as plain JSON by a
manager in JSON mode; everything else — handshake-era sessions, their GET
streams, and streaming 2026-07-28 requests — goes to the SSE manager. The JSON
path spares the SSE machinery a task pair and a memory stream per call, which is
most of what a tools/call costs the transport. Of those, a plain `tools/call` goes
to the fast lane (fastlane.py), which answers it without the SDK's session when it can,
and leaves it to the JSON manager when it cannot. A handshake-era POST on an established
MCP session is parsed once too: the SSE manager's lane side (handshake.py) answers a
plain tools/call as one JSON body, and hands everything else to that manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import DEFAULT_MAX_REQUEST_BODY_SIZE, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import LOG_LEVEL_META_KEY
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Message, Receive, Scope, Send

from gateway.http.fastlane import FastLane
from gateway.http.handshake import LaneSessionManager
from gateway.http.headers import RequestHeaders
from gateway.telemetry import Tracing

if TYPE_CHECKING:
    from gateway.mcp.server import Front
    from gateway.mcp.views import View

_MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
_HANDSHAKE = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)


def mcp_endpoint(front: Front, view: View, security: TransportSecuritySettings) -> McpEndpoint:
    """The endpoint of one view: its SDK server, and the fast lane in front of it."""
    server = front.server(view)
    traced = isinstance(front.telemetry, Tracing)
    lane = FastLane(front.pipeline, front.shared, front.session_ended, view, server, front.fanout, traced=traced)
    return McpEndpoint(server, security, lane)


class McpEndpoint:
    """ASGI app for one MCP path."""

    def __init__(self, server: Server[Any], security: TransportSecuritySettings, lane: FastLane | None = None) -> None:
        # Handshake-era sessions' SSE streams are resumable (priming event, retry, Last-Event-ID):
        # gateway/http/resumable.py; their plain tools/calls take the lane (gateway/http/handshake.py).
        self.streaming = LaneSessionManager(app=server, json_response=False, security_settings=security)
        self.plain = StreamableHTTPSessionManager(app=server, json_response=True, security_settings=security)
        self.lane = lane  # plain tools/calls, answered without the SDK session (gateway/http/fastlane.py)

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
        headers = RequestHeaders.of(scope)
        if (read := await self._read_once(scope, headers, receive)) is not None:
            message, receive = read
            if headers.protocol_version in _MODERN:
                if message is not None and _needs_no_stream(message):
                    if self.lane is not None and await self.lane.serve(message, headers, scope, send):
                        return
                    await self.plain.handle_request(scope, receive, send)
                    return
            elif self.lane is not None and message is not None:  # a POST on a handshake-era session
                if await self.streaming.serve(self.lane, message, headers, scope, send):
                    return
        await self.streaming.handle_request(scope, receive, send)

    async def _read_once(self, scope: Scope, headers: RequestHeaders, receive: Receive) -> tuple[Any, Receive] | None:
        """For a POST the lane or the JSON manager may take (a 2026-07-28 one, or one on a handshake-era session
        when there is a lane), bounded in size: its parsed body (None if it does not parse) and a `receive` that
        hands the body over again. None for anything else, read by the SDK alone."""
        length = headers.content_length or ""
        if scope["method"] != "POST" or not length.isdigit() or int(length) > DEFAULT_MAX_REQUEST_BODY_SIZE:
            return None
        handshake = headers.mcp_session_id is not None and headers.protocol_version in _HANDSHAKE
        if headers.protocol_version not in _MODERN and not (self.lane is not None and handshake):
            return None
        body, receive = await _buffered(receive)
        return (_parsed(body) if body is not None else None), receive


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


def _parsed(body: bytes) -> Any:
    """The request, parsed once; None if it does not parse (the SSE manager answers the parse error, as for any
    request, and the few inputs only the stdlib accepts, such as integers beyond 64 bits, take that path too)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _needs_no_stream(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("method") == "subscriptions/listen":
        return False
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return not isinstance(meta, dict) or ("progressToken" not in meta and LOG_LEVEL_META_KEY not in meta)
