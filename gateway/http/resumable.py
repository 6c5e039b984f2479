"""Resumable SSE streams for handshake-era MCP sessions (SEP-1699): event ids, priming, `retry`, `Last-Event-ID`.

Every SSE event the gateway sends on a session's streams gets an id; each stream opens with a priming
event (an id, empty data, and a `retry` hint), so a client whose stream broke can reconnect with
`Last-Event-ID` and receive what it missed. Each MCP session keeps its own small store: stream ids are
request ids, unique only within one session, and one session must never replay another's events. The
store keeps the last `MAX_EVENTS` events of the session and dies with it.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import Any

from mcp.server.streamable_http import EventCallback, EventMessage, EventStore, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.jsonrpc import JSONRPCMessage

MAX_EVENTS = 256  # per MCP session: enough for a dropped stream's tail, bounded however long the session lives
RETRY_MS = 1000  # the reconnection delay suggested to clients in every priming event


class SessionEvents(EventStore):
    """One MCP session's recent SSE events; ids are `<random prefix>.<seq>`, unguessable across sessions."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self._prefix = secrets.token_urlsafe(9)
        self._seq = itertools.count(1)
        self._events: deque[tuple[int, Any, JSONRPCMessage | None]] = deque(maxlen=limit)

    async def store_event(self, stream_id: Any, message: JSONRPCMessage | None) -> str:
        seq = next(self._seq)
        self._events.append((seq, stream_id, message))
        return f"{self._prefix}.{seq}"

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> Any:
        prefix, _, number = last_event_id.rpartition(".")
        if prefix != self._prefix or not number.isdigit():
            return None  # not this session's, or no longer kept
        after = int(number)
        stream = next((s for seq, s, _ in self._events if seq == after), None)
        if stream is None:
            return None
        for seq, stream_id, message in list(self._events):
            if seq > after and stream_id == stream and message is not None:
                await send_callback(EventMessage(message, f"{self._prefix}.{seq}"))
        return stream


class ResumableSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, each new session's transport given an event store of its own.

    The SDK takes one store for every session; the transport reads its `_event_store` and `_retry_interval`
    only while serving, so they are set on each transport as it is admitted, before its first request.
    """

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None:
            transport._event_store = SessionEvents()
            transport._retry_interval = RETRY_MS
        return transport
