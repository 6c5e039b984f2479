"""A streamable-HTTP upstream's transport: the SDK's, with each SSE answer read to its end, and a lean tools/call.

The SDK closes a request's SSE answer as soon as the JSON-RPC response has arrived, a few bytes before
the server's own end of that stream (which follows at once: a server SHOULD close it after the
response). Two costs follow on every call to an upstream that answers on SSE, as handshake-era servers
do: httpcore cannot put a connection whose response was not read to its end back in the pool, so it
drops it and the next call connects anew; and the abandoned chain of async generators under the event
stream (the event parser, the text and byte decoders) is left to the event loop's finalizer, a
cross-thread wake-up and a task for each. Here the answer is read on to its end, briefly and boundedly,
and what follows the response is dropped, as the SDK's close dropped it: the same messages reach the
session, the connection is reused and the generators end on their own.

`HttpTransport.request` is the first round of a tools/call without the dispatcher, the SDK transport's task
and streams, or httpx2: one POST on a kept-alive connection of its own (upstream/http_wire.py), with the
headers and body the SDK path would send (the client's headers and the transport's, the stamp's, the lean
id), its answer read inline, JSON or SSE, and handed back as a dict. Every other message on the answer's
stream (progress, logs, a server's requests) reaches the session as the SDK transport hands it; an answer
that follows such messages waits its turn behind them (upstream/lanes.py). What the SDK path makes of each
reply is kept: an error status with a JSON-RPC error body raises that error, 404 is "Session terminated",
another error status "Server returned an error response", 202 and an unknown content type the SDK's
INVALID_REQUEST, an unparsable message PARSE_ERROR, a stream cut after an event id is resumed by the SDK
transport's own reconnection (`_handle_reconnection`), a stream ended without an answer CONNECTION_CLOSED, a
connection that fails or closes before its reply CONNECTION_CLOSED (the hub then reconnects, as when the SDK
transport's task fails). The read timeout and a cancelled caller end in the dispatcher's courtesy
`notifications/cancelled` (through the SDK transport, which swallows it at 2026-07-28, where closing the
request's stream is the signal: the lean POST's connection is closed). It declines (the SDK path sends the call)
while a tracer provider is installed, when the client has auth, cookies or a proxy, when a header would not
be valid, when its connections are all in use, and from the first redirect on (the SDK path follows the
endpoint's in-origin redirects).

Copied from mcp 2.3.0 (pinned in .ci/constraints.txt), each changed only where marked: the SDK's private
`StreamableHTTPTransport._handle_sse_response`, and `streamable_http_client` (`open`: it offers no way to pass a
transport of another class). Private SDK and httpx2 members used, not copied: the transport's
`_handle_reconnection`, `_protocol_version_header` and SSE event size bound, httpx2's SSE parser.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httptools
import httpx2
import pydantic_core
from httpx2 import EventSource
from httpx2._sse import _SSEParser
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import MCP_SESSION_ID, RequestContext, StreamableHTTPTransport
from mcp.shared._compat import resync_tracer
from mcp.shared._context_streams import ContextSendStream, create_context_streams
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ErrorData,
    JSONRPCRequest,
    jsonrpc_message_adapter,
)
from mcp_types.jsonrpc import JSONRPCError, JSONRPCMessage, JSONRPCNotification
from pydantic import ValidationError

from gateway.upstream.http_wire import Pool, Reply
from gateway.upstream.lanes import (
    ANSWER,
    MARK,
    PREFIX,
    InOrder,
    Item,
    SessionStream,
    Waiter,
    encoded,
    exchange,
    outcome_of,
    plain_answer,
    routed,
    settled,
    traced,
)

logger = logging.getLogger("mcp.client.streamable_http")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field names
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # field values: no controls but tab

_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, OSError, httptools.HttpParserError)  # a reply cut off

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


_Outcome = dict[str, Any] | ErrorData


class HttpTransport:
    """One connection's streamable-HTTP transport: `open()` is `streamable_http_client(url, http_client=http)` on
    `_ReadToEnd`, and closes `http`; `request` is the lean path."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._sdk = _ReadToEnd(url)
        parts = urlsplit(url)
        self._pool = Pool(parts) if parts.scheme in ("http", "https") and not parts.username else None
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port and parts.port != (443 if parts.scheme == "https" else 80) else ""
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._start = f"POST {target} HTTP/1.1\r\nHost: {host}{port}\r\n"
        self._headers = {name.lower(): (name, value) for name, value in http.headers.items()}
        self._headers["accept"] = ("accept", "application/json, text/event-stream")  # the transport's, as merged
        self._headers["content-type"] = ("content-type", "application/json")
        self._headers["accept-encoding"] = ("Accept-Encoding", "identity")  # nothing to decode on this path
        self._declined = not _valid(self._headers.values())  # set too at the endpoint's first redirect
        self._to_session: ContextSendStream[Item] | None = None
        self._write: ContextSendStream[SessionMessage] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._next_id = 0

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[TransportStreams]:
        """The session's (read, write) streams, as `streamable_http_client` yields them."""
        transport = self._sdk
        http = self._http
        to_session, read_stream = create_context_streams[Item](0)
        read_stream_writer = cast("ContextSendStream[SessionMessage | Exception]", to_session)  # the SDK's items
        write_stream, write_stream_reader = create_context_streams[SessionMessage](0)
        async with (
            http,  # changed: the client closes with the transport
            read_stream_writer,
            read_stream,
            write_stream,
            write_stream_reader,
            anyio.create_task_group() as tg,
        ):

            def start_get_stream() -> None:
                tg.start_soon(transport.handle_get_stream, http, read_stream_writer)

            tg.start_soon(
                transport.post_writer, http, write_stream_reader, read_stream_writer, write_stream, start_get_stream, tg
            )
            self._to_session, self._write, self._tg = to_session, write_stream, tg  # changed: for `request`
            try:
                yield SessionStream(read_stream), write_stream  # changed: it settles lean answers in their turn
            finally:
                self._to_session = self._write = self._tg = None  # changed: no lean requests from here on
                if self._pool is not None:
                    await self._pool.close()
                if transport.session_id:
                    await transport.terminate_session(http)
                tg.cancel_scope.cancel()
        await resync_tracer()

    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        timeout: float | None,
        on_progress: ProgressFnT | None,
    ) -> dict[str, Any] | None:
        """The raw result of `method`, as `send_raw_request(method, params, {"headers": headers, "timeout": ...,
        "on_progress": ...})` returns it through the SDK transport; None, having changed nothing, when it declines
        (see the module docstring).

        Raises:
            MCPError: the server's error answer, or the SDK transport's for the reply; REQUEST_TIMEOUT after
                `timeout`; CONNECTION_CLOSED.
        """
        http, pool = self._http, self._pool
        if (
            self._declined
            or pool is None
            or pool.full()
            or http.auth is not None
            or http.cookies
            or http._mounts
            or traced()
            or not _valid(headers.items())
        ):
            return None
        if self._to_session is None:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        self._next_id += 1
        request_id = f"{PREFIX}{self._next_id}"
        try:
            body = encoded(method, params, request_id, on_progress)
        except pydantic_core.PydanticSerializationError:
            return None
        stamped = headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if stamped is not None:  # the negotiated-version cache, as the SDK transport's post_writer keeps it
            self._sdk._protocol_version_header = stamped
        try:
            head = self._head(headers, len(body))
        except UnicodeEncodeError:  # a header httpx2 would send as UTF-8: left to it
            return None
        waiter = Waiter(on_progress, 0)
        stream = await self._connect()

        async def send() -> None:
            try:
                await stream.send(head + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None

        kept = False
        try:
            outcome, reply, handed = await exchange(
                method,
                request_id,
                timeout,
                send,
                lambda: self._answer(stream, method, request_id, waiter),
                self._cancel,
            )
            kept = self._release(stream, reply)
        finally:
            if not kept:
                await pool.drop(stream)
        if outcome is None:  # the endpoint redirected: the SDK path follows it
            self._declined = True
            return None
        to_session = self._to_session  # None once the connection has closed: no session left to keep order with
        if handed and to_session is not None:  # the call's own messages went to the session: its answer follows them
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await to_session.send(InOrder(waiter, outcome))
                await waiter.answered.wait()
        return settled(outcome)

    def _head(self, headers: Mapping[str, str], length: int) -> bytes:
        merged = self._headers.copy()
        sdk = self._sdk
        if sdk.session_id:
            merged[MCP_SESSION_ID] = (MCP_SESSION_ID, sdk.session_id)
        if sdk._protocol_version_header:
            merged[MCP_PROTOCOL_VERSION_HEADER.lower()] = (MCP_PROTOCOL_VERSION_HEADER, sdk._protocol_version_header)
        for name, value in headers.items():
            merged[name.lower()] = (name, value)
        merged["content-length"] = ("Content-Length", str(length))
        lines = "".join(f"{name}: {value}\r\n" for name, value in merged.values())
        return (self._start + lines + "\r\n").encode("latin-1")

    async def _connect(self) -> anyio.abc.ByteStream:
        assert self._pool is not None
        try:
            return await self._pool.take()
        except OSError:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None

    def _release(self, stream: anyio.abc.ByteStream, reply: Reply | None) -> bool:
        """Whether `stream` is taken care of: back in the pool, or read to its end first, on a task of its own."""
        if reply is None or self._pool is None:
            return False
        if not reply.done:
            if self._tg is None:
                return False
            self._tg.start_soon(self._drain, stream, reply)
            return True
        return reply.keep_alive and self._pool.give_back(stream)

    async def _drain(self, stream: anyio.abc.ByteStream, reply: Reply) -> None:
        """What follows an answer on its stream is dropped, as the SDK path drops it (`_read_to_end`)."""
        assert self._pool is not None
        kept = False
        try:
            with anyio.move_on_after(END_SECONDS):
                with contextlib.suppress(*_BROKEN):
                    while not reply.done:
                        reply.feed(await stream.receive())
            kept = reply.done and reply.keep_alive and self._pool.give_back(stream)
        finally:
            if not kept:
                await self._pool.drop(stream)

    async def _answer(
        self, stream: anyio.abc.ByteStream, method: str, request_id: str, waiter: Waiter
    ) -> tuple[_Outcome | None, Reply | None, int]:
        """The reply's outcome (None for a redirect), the reply, and how many messages went to the session."""
        reply = Reply()
        try:
            while not reply.headers_done:
                reply.feed(await stream.receive())
        except _BROKEN:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        status, content_type = reply.status, reply.header(b"content-type").lower()
        if reply.header(b"set-cookie"):  # kept as the SDK's client keeps them (its path sends them from now on)
            self._http.cookies.extract_cookies(
                httpx2.Response(status, headers=reply.headers, request=httpx2.Request("POST", self._sdk.url))
            )
        if status == 202:
            return ErrorData(code=INVALID_REQUEST, message="server answered a request with 202 Accepted"), reply, 0
        if 300 <= status < 400 and reply.header(b"location"):
            return None, reply, 0
        if status >= 400:
            return await self._failed(stream, reply, status, content_type), reply, 0
        if content_type.startswith("application/json"):
            return await self._json(stream, reply, request_id, waiter)
        if content_type.startswith("text/event-stream"):
            return await self._events(stream, reply, method, request_id, waiter)
        logger.error(f"Unexpected content type: {content_type}")
        return ErrorData(code=INVALID_REQUEST, message=f"Unexpected content type: {content_type}"), reply, 0

    async def _body(self, stream: anyio.abc.ByteStream, reply: Reply) -> bytes:
        """The whole body (one that ends with the connection, too).

        Raises:
            MCPError: CONNECTION_CLOSED, the connection failed or closed before the body's end.
        """
        try:
            while not reply.done:
                reply.feed(await stream.receive())
        except anyio.EndOfStream:
            if reply.header(b"content-length") or reply.header(b"transfer-encoding"):
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        except _BROKEN:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        return b"".join(reply.body)

    async def _failed(self, stream: anyio.abc.ByteStream, reply: Reply, status: int, content_type: str) -> ErrorData:
        """An error status: the JSON-RPC error its body carries, else the SDK transport's stand-in."""
        if content_type.startswith("application/json"):
            try:
                parsed = jsonrpc_message_adapter.validate_json(await self._body(stream, reply), by_name=False)
            except ValidationError:
                parsed = None
            if isinstance(parsed, JSONRPCError):
                return parsed.error
            logger.debug("Non-2xx body was not a JSON-RPC error; using fallback")
        if status == 404:
            if self._sdk.session_id is None:
                return ErrorData(code=METHOD_NOT_FOUND, message="Not Found")
            return ErrorData(code=INVALID_REQUEST, message="Session terminated")
        return ErrorData(code=INTERNAL_ERROR, message="Server returned an error response")

    async def _json(
        self, stream: anyio.abc.ByteStream, reply: Reply, request_id: str, waiter: Waiter
    ) -> tuple[_Outcome, Reply, int]:
        body = await self._body(stream, reply)
        answer = plain_answer(body, {request_id: waiter})
        if answer is not None:
            return answer[1], reply, 0
        try:
            message = jsonrpc_message_adapter.validate_json(body, by_name=False)
        except ValidationError as exc:
            logger.exception("Error parsing JSON response")
            return ErrorData(code=PARSE_ERROR, message=f"Failed to parse JSON response: {exc}"), reply, 0
        routed_answer = routed(message, {request_id: waiter}, self._tg)
        if routed_answer is not None:
            return routed_answer[1], reply, 0
        # Not this request's answer: the session takes it, and the request waits (for its timeout), as on the SDK path.
        await self._hand(message)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def _events(
        self, stream: anyio.abc.ByteStream, reply: Reply, method: str, request_id: str, waiter: Waiter
    ) -> tuple[_Outcome, Reply | None, int]:
        """The answer on an SSE stream; the stream's other messages are handed to the session on the way."""
        pending = {request_id: waiter}
        parser = _SSEParser(self._sdk.max_sse_event_size)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # httpx2's aiter_text, for this charset
        last_event_id: str | None = None
        retry_ms: int | None = None
        handed = 0
        finished = False
        try:
            while not finished:
                if not reply.body and not reply.done:
                    try:
                        reply.feed(await stream.receive())
                    except _BROKEN:
                        logger.debug("SSE stream ended", exc_info=True)
                        finished = True
                finished = finished or reply.done
                chunks, reply.body = reply.body, []
                events = [sse for chunk in chunks for sse in parser.decode(text.decode(chunk))]
                if finished:
                    events += [*parser.decode(text.decode(b"", final=True)), *parser.flush()]
                for sse in events:
                    if sse.id:
                        last_event_id = sse.id
                    if sse.retry is not None:
                        retry_ms = sse.retry
                    if sse.event != "message":
                        logger.warning(f"Unknown SSE event: {sse.event}")
                        continue
                    if not sse.data:  # a priming event (this path has no resumption callback)
                        continue
                    answer = plain_answer(sse.data, pending) if MARK in sse.data else None
                    if answer is not None:
                        return answer[1], reply, handed
                    try:
                        message = jsonrpc_message_adapter.validate_json(sse.data, by_name=False)
                    except Exception as exc:
                        logger.exception("Error parsing SSE message")
                        error = ErrorData(code=PARSE_ERROR, message=f"Failed to parse SSE message: {exc}")
                        return error, reply, handed
                    if isinstance(message, ANSWER):  # the answer, whatever its id (as the SDK)
                        return outcome_of(message), reply, handed
                    routed(message, pending, self._tg)
                    await self._hand(message)
                    handed += 1
        except httpx2.SSEError as exc:
            return ErrorData(code=CONNECTION_CLOSED, message=f"SSE stream failed: {exc}"), None, handed
        if last_event_id is None:
            return ErrorData(code=CONNECTION_CLOSED, message="SSE stream ended without a response"), None, handed
        logger.info("SSE stream disconnected, reconnecting...")
        resumed = _Resumed(self, waiter)
        context = RequestContext(
            client=self._http,
            session_id=self._sdk.session_id,
            session_message=SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)),
            metadata=None,
            read_stream_writer=resumed,  # type: ignore[arg-type]
        )
        await self._sdk._handle_reconnection(context, last_event_id, retry_ms)
        return (
            waiter.outcome or ErrorData(code=CONNECTION_CLOSED, message="Connection closed"),
            None,
            handed + resumed.handed,
        )

    async def _hand(self, message: JSONRPCMessage) -> None:
        """A message of the request's stream, to the session (as the SDK transport sends it on)."""
        if self._to_session is None:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        try:
            await self._to_session.send(SessionMessage(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None

    async def _cancel(self, params: dict[str, Any]) -> None:
        """The courtesy cancel goes through the SDK transport, which swallows it at 2026-07-28."""
        if self._write is not None:
            cancel = JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)
            await self._write.send(SessionMessage(cancel))


class _Resumed:
    """The read side the SDK's reconnection writes to for a lean request: its answer settles the waiter, the rest
    goes to the session."""

    def __init__(self, transport: HttpTransport, waiter: Waiter) -> None:
        self._transport = transport
        self._waiter = waiter
        self.handed = 0

    async def send(self, item: SessionMessage | Exception) -> None:
        if isinstance(item, SessionMessage) and isinstance(item.message, ANSWER):
            self._waiter.settle(outcome_of(item.message))
            return
        if isinstance(item, SessionMessage):
            await self._transport._hand(item.message)
            self.handed += 1


def _valid(headers: Iterable[tuple[str, str]]) -> bool:
    """No header name or value that would break the request's head (httpx2 refuses them too)."""
    return all(_TOKEN.fullmatch(name) and not _BAD_VALUE.search(value) for name, value in headers)
