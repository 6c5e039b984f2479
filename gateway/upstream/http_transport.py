"""The SDK's streamable-HTTP client transport, with each request's SSE answer read to its end.

The SDK closes a request's SSE answer as soon as the JSON-RPC response has arrived, a few bytes before
the server's own end of that stream (which follows at once: a server SHOULD close it after the
response). Two costs follow on every call to an upstream that answers on SSE, as handshake-era servers
do: httpcore cannot put a connection whose response was not read to its end back in the pool, so it
drops it and the next call connects anew; and the abandoned chain of async generators under the event
stream (the event parser, the text and byte decoders) is left to the event loop's finalizer, a
cross-thread wake-up and a task for each. Here the answer is read on to its end, briefly and boundedly,
and what follows the response is dropped, as the SDK's close dropped it: the same messages reach the
session, the connection is reused and the generators end on their own.

`StreamableHTTPTransport._handle_sse_response` is private SDK code, and `streamable_http_client` offers
no way to pass a transport of another class: both are copied from mcp 2.3.0 (pinned in
.ci/constraints.txt), each changed only where marked.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import httpx2
from httpx2 import EventSource
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import RequestContext, StreamableHTTPTransport
from mcp.shared._compat import resync_tracer
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCRequest

logger = logging.getLogger("mcp.client.streamable_http")

END_SECONDS = 0.25  # how long the rest of an answered stream may take to end before it is closed anyway


class _ReadToEnd(StreamableHTTPTransport):
    async def _handle_sse_response(self, response: httpx2.Response, ctx: RequestContext) -> None:
        last_event_id: str | None = None
        retry_interval_ms: int | None = None
        assert isinstance(ctx.session_message.message, JSONRPCRequest)
        original_request_id = ctx.session_message.message.id

        try:
            events = aiter(EventSource(response, max_event_size=self.max_sse_event_size))  # changed: kept, to read on
            async for sse in events:
                if sse.id:
                    last_event_id = sse.id
                if sse.retry is not None:
                    retry_interval_ms = sse.retry
                is_complete = await self._handle_sse_event(
                    sse,
                    ctx.read_stream_writer,
                    original_request_id=original_request_id,
                    resumption_callback=(ctx.metadata.on_resumption_token_update if ctx.metadata else None),
                )
                if is_complete:
                    await _read_to_end(events)  # changed: the SDK closes the response here
                    await response.aclose()
                    return
        except httpx2.SSEError as exc:
            await self._resolve_abandoned_request(
                ctx.read_stream_writer, original_request_id, f"SSE stream failed: {exc}"
            )
            return
        except Exception:
            logger.debug("SSE stream ended", exc_info=True)

        if last_event_id is not None:
            logger.info("SSE stream disconnected, reconnecting...")
            await self._handle_reconnection(ctx, last_event_id, retry_interval_ms)
        else:
            await self._resolve_abandoned_request(
                ctx.read_stream_writer, original_request_id, "SSE stream ended without a response"
            )


async def _read_to_end(events: AsyncIterator[object]) -> None:
    """Drop what an answered stream still brings until it ends; give up (the response then closes the
    connection, as before) after `END_SECONDS` or on a failure."""
    with anyio.move_on_after(END_SECONDS), contextlib.suppress(httpx2.TransportError):
        async for _ in events:
            pass


@contextlib.asynccontextmanager
async def streamable_http(url: str, http: httpx2.AsyncClient) -> AsyncIterator[TransportStreams]:
    """`mcp.client.streamable_http.streamable_http_client(url, http_client=http)`, on `_ReadToEnd`."""
    transport = _ReadToEnd(url)  # changed: the SDK's own class
    read_stream_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_stream_reader = create_context_streams[SessionMessage](0)
    async with read_stream_writer, read_stream, write_stream, write_stream_reader, anyio.create_task_group() as tg:

        def start_get_stream() -> None:
            tg.start_soon(transport.handle_get_stream, http, read_stream_writer)

        tg.start_soon(
            transport.post_writer, http, write_stream_reader, read_stream_writer, write_stream, start_get_stream, tg
        )
        try:
            yield read_stream, write_stream
        finally:
            if transport.session_id:
                await transport.terminate_session(http)
            tg.cancel_scope.cancel()
    await resync_tracer()
