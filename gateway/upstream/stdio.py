"""A stdio upstream's transport: the SDK's `stdio_client`, plus a lean path for the first round of a tools/call.

Through `stdio_client` a request crosses two memory streams and three tasks each way and is validated into
pydantic envelopes on both; the dispatcher then correlates the answer on a task of its own. `StdioTransport`
spawns, pipes and stops the server exactly as `stdio_client` does (the SDK's own helpers: environment,
process creation in its own process group, stdout drain, the close-stdin / wait / terminate / kill
sequence) and offers `request`: one line written straight to the pipe, under the lock every SDK-path write
takes too (so lines never interleave), with an id from a space of its own (`lean-N`: never one of the
dispatcher's integers, nor a string it would coerce to one). The reader hands the answer to that id
straight to its waiter, as a dict; every other line reaches the SDK's read stream as `stdio_client` would
hand it (`_parse_line`), so server requests, notifications and the SDK's own answers are untouched. An answer
that follows lines handed to the session while its call was pending (a log line the call caused, say) goes
through that stream too, and is settled as the session takes it: the session dispatches those lines first, as
it would have dispatched them before resolving its own request, so a log relayed to the caller's stream is
never overtaken by the answer that closes it.

`request` keeps the dispatcher's semantics (`JSONRPCDispatcher.send_raw_request`): the progress token is the
request id (progress notifications for it are routed to the callback and still teed to the session, as the
dispatcher tees them); the read timeout runs from the write and ends in a courtesy `notifications/cancelled`
and MCPError(REQUEST_TIMEOUT); a cancelled caller sends that cancel shielded; an error answer raises the
MCPError the dispatcher raises; the pipe closing fails every waiter with MCPError(CONNECTION_CLOSED) at
once. Lines are read and written with pydantic-core, the parser and serializer the SDK path uses, so every
value (an integer beyond 64 bits, an infinity sent as null) is what the SDK path would read and write.

Private SDK members, unavoidable to reuse rather than copy: the stdio helpers and timeouts of
`mcp.client.stdio`, and the dispatcher's `_shielded_progress` and abandon-write bound.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.lowlevel
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.text import TextReceiveStream
from mcp.client._transport import TransportStreams
from mcp.client.session import ClientSession
from mcp.client.stdio import (
    _WRITER_FLUSH_TIMEOUT,
    StdioServerParameters,
    _aclose_all,
    _create_platform_compatible_process,
    _drain_stdout,
    _get_executable_command,
    _parse_line,
    _stop_server_process,
    get_default_environment,
)
from mcp.os.win32.utilities import ServerProcess
from mcp.shared._otel import inject_trace_context
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import _ABANDON_WRITE_TIMEOUT, _shielded_progress
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ErrorData
from mcp_types.jsonrpc import JSONRPCError, JSONRPCMessage, JSONRPCNotification, JSONRPCResponse
from opentelemetry import trace

# Their log lines keep the SDK's logger names: stdio_client's for the pipes, the dispatcher's for a cancel.
_pipes_log = logging.getLogger("mcp.client.stdio")
_cancel_log = logging.getLogger("mcp.shared.jsonrpc_dispatcher")

_PREFIX = "lean-"
_MARK = f'"{_PREFIX}'  # in every line that carries a lean id; lines without it skip the lean parse
_LANES: weakref.WeakKeyDictionary[ClientSession, StdioTransport] = weakref.WeakKeyDictionary()


def lane(session: ClientSession) -> StdioTransport | None:
    """The stdio transport under `session`, if its connection bound one (`bind`)."""
    return _LANES.get(session)


def bind(session: ClientSession, transport: StdioTransport) -> None:
    _LANES[session] = transport


class _Waiter:
    __slots__ = ("answered", "outcome", "on_progress", "handed")

    def __init__(self, on_progress: ProgressFnT | None, handed: int) -> None:
        self.answered = anyio.Event()
        self.outcome: dict[str, Any] | ErrorData | None = None  # None once answered: the connection closed
        self.on_progress = on_progress
        self.handed = handed  # the lines handed to the session when the request went out

    def settle(self, outcome: dict[str, Any] | ErrorData | None) -> None:
        if not self.answered.is_set():  # a second answer to one id is dropped, as the dispatcher drops it
            self.outcome = outcome
            self.answered.set()


class _InOrder:
    """A lean answer that waits its turn in the session's read stream (see the module docstring)."""

    __slots__ = ("waiter", "outcome")

    def __init__(self, waiter: _Waiter, outcome: dict[str, Any] | ErrorData) -> None:
        self.waiter = waiter
        self.outcome = outcome


_Item = SessionMessage | Exception | _InOrder


class _SessionStream:
    """The session's read stream: it settles the `_InOrder` answers it passes, and hands on everything else."""

    def __init__(self, inner: MemoryObjectReceiveStream[_Item]) -> None:
        self._inner = inner

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, _InOrder):
                return item
            item.waiter.settle(item.outcome)

    def __aiter__(self) -> _SessionStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _SessionStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class StdioTransport:
    """One spawn of a stdio server: `open()` is `stdio_client(server, errlog)`; `request` is the lean path."""

    def __init__(self, server: StdioServerParameters, errlog: TextIO) -> None:
        self._server = server
        self._errlog = errlog
        self._lock = anyio.Lock(fast_acquire=True)
        self._pending: dict[str, _Waiter] = {}
        self._next_id = 0
        self._closed = True  # until open() runs, and again once the pipes are gone
        self._shutting_down = False
        self._stdin: anyio.abc.ByteSendStream | None = None
        self._to_session: MemoryObjectSendStream[_Item] | None = None
        self._handed = 0  # lines handed to the session so far
        self._tg: anyio.abc.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[TransportStreams]:
        """Spawn the server and yield the session's (read, write) streams; on exit, stop it as `stdio_client` does.

        Raises:
            OSError: the server process cannot be spawned.
            ValueError: the spawn parameters are invalid.
        """
        server = self._server
        command = await _get_executable_command(server.command)
        process = await _create_platform_compatible_process(
            command=command,
            args=server.args,
            env=get_default_environment() | (server.env or {}),
            errlog=self._errlog,
            cwd=server.cwd,
        )
        # As in stdio_client: no awaits until the task group is entered, or a cancellation would leak the process.
        to_session, read_stream = anyio.create_memory_object_stream[_Item](0)
        write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)
        assert process.stdin is not None and process.stdout is not None
        self._stdin, self._to_session, self._closed = process.stdin, to_session, False
        writer_done = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._read, process, to_session)
            tg.start_soon(self._write_session, from_session, writer_done)
            try:
                yield _SessionStream(read_stream), write_stream
            finally:
                self._shutting_down = True
                with anyio.CancelScope(shield=True):  # every wait inside is bounded (stdio_client's shutdown)
                    self._lost()
                    read_stream.close()
                    write_stream.close()
                    with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT):
                        await writer_done.wait()
                    await _stop_server_process(process)
                    await _aclose_all(read_stream, write_stream, to_session, from_session)
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
        self._tg = None
        await anyio.lowlevel.cancel_shielded_checkpoint()

    # ------------------------------------------------------------ pipes

    async def _read(self, process: ServerProcess, to_session: MemoryObjectSendStream[_Item]) -> None:
        assert process.stdout is not None
        stdout = TextReceiveStream(
            process.stdout, encoding=self._server.encoding, errors=self._server.encoding_error_handler
        )
        try:
            async with to_session:
                try:
                    buffer = ""
                    async for chunk in stdout:
                        lines = (buffer + chunk).split("\n")
                        buffer = lines.pop()
                        for line in lines:
                            answer: tuple[_Waiter, dict[str, Any] | ErrorData] | None = None
                            if self._pending and _MARK in line:
                                answer = self._answered(line)
                            if answer is None:
                                item = _parse_line(line)
                                if self._pending and isinstance(item, SessionMessage):
                                    answer = self._routed(item.message)
                            if answer is not None and answer[0].handed == self._handed:
                                answer[0].settle(answer[1])  # nothing reached the session meanwhile
                                continue
                            try:
                                await to_session.send(item if answer is None else _InOrder(*answer))
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return
                            if answer is None:
                                self._handed += 1
                finally:
                    self._lost()  # the pipe ended: every lean waiter fails now, as the dispatcher's fan-out
                    await _drain_stdout(process)
        except anyio.ClosedResourceError:
            pass
        except (anyio.BrokenResourceError, ConnectionError):
            if not self._shutting_down:
                _pipes_log.exception("Reading from the MCP server's stdout failed mid-session")

    async def _write_session(self, from_session: MemoryObjectReceiveStream[SessionMessage], done: anyio.Event) -> None:
        server = self._server
        try:
            async with from_session:
                async for message in from_session:
                    json = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await self._send(
                        (json + "\n").encode(encoding=server.encoding, errors=server.encoding_error_handler)
                    )
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            self._lost()  # the server may still be alive: end the session's read side so nothing waits forever
        finally:
            done.set()

    async def _send(self, data: bytes) -> None:
        assert self._stdin is not None
        async with self._lock:
            await self._stdin.send(data)

    def _lost(self) -> None:
        """The pipes are gone (or going): close the session's read side and fail every lean waiter."""
        self._closed = True
        if self._to_session is not None:
            self._to_session.close()
        for waiter in self._pending.values():
            waiter.settle(None)

    # ------------------------------------------------------------ the lean request

    def _answered(self, line: str) -> tuple[_Waiter, dict[str, Any]] | None:
        """A lean waiter and its result from a plain result line, parsed once; else None (for `_parse_line`)."""
        try:
            message = pydantic_core.from_json(line)
        except ValueError:
            return None
        if type(message) is not dict or message.get("jsonrpc") != "2.0" or "method" in message or "error" in message:
            return None
        request_id, result = message.get("id"), message.get("result")
        waiter = self._pending.get(request_id) if type(request_id) is str else None
        if waiter is None or type(result) is not dict:
            return None
        return waiter, result

    def _routed(self, message: JSONRPCMessage) -> tuple[_Waiter, dict[str, Any] | ErrorData] | None:
        """A lean waiter and its outcome from a validated answer, or None (a lean progress notification is routed
        to its callback, and teed on)."""
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            waiter = self._pending.get(message.id) if isinstance(message.id, str) else None
            if waiter is None:
                return None
            return waiter, message.result if isinstance(message, JSONRPCResponse) else message.error
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
            match message.params:  # the dispatcher's own test of a progress notification
                case {"progressToken": str() as token, "progress": int() | float() as progress, **fields} if (
                    not isinstance(progress, bool)
                    and (waiter := self._pending.get(token)) is not None
                    and waiter.on_progress is not None
                    and self._tg is not None
                ):
                    total, text = fields.get("total"), fields.get("message")
                    self._tg.start_soon(
                        _shielded_progress(waiter.on_progress),
                        float(progress),
                        float(total) if isinstance(total, int | float) else None,
                        text if isinstance(text, str) else None,
                    )
        return None

    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None,
        on_progress: ProgressFnT | None,
    ) -> dict[str, Any] | None:
        """The raw result of `method`, as `send_raw_request(method, params, {"timeout": ..., "on_progress": ...})`
        returns it; None, before anything is sent, when this path cannot send exactly what that one would.

        Declines when a global tracer provider is installed (the dispatcher's span would then be a new one,
        its context on the request), or when the params do not serialize.

        Raises:
            MCPError: the server's error answer; REQUEST_TIMEOUT after `timeout`; CONNECTION_CLOSED.
        """
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None
        if self._closed:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        self._next_id += 1
        request_id = f"{_PREFIX}{self._next_id}"
        out_params = dict(params)
        meta = dict(out_params.get("_meta") or {})
        if on_progress is not None:
            meta["progressToken"] = request_id
        inject_trace_context(meta)  # the current span's context, as the dispatcher's no-op span carries it
        if meta:
            out_params["_meta"] = meta
        else:
            out_params.pop("_meta", None)
        envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if out_params:
            envelope["params"] = out_params
        try:
            line = pydantic_core.to_json(envelope, inf_nan_mode="null") + b"\n"  # model_dump_json's bytes
        except pydantic_core.PydanticSerializationError:
            return None
        waiter = self._pending[request_id] = _Waiter(on_progress, self._handed)
        written = False
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            written = True
            try:
                await self._send(line)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                self._lost()
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
            with anyio.move_on_after(timeout) as clock:
                await waiter.answered.wait()
            if clock.cancelled_caught:
                await self._cancel(request_id, f"timed out after {timeout}s", "timed-out", shield=False)
                raise MCPError(code=REQUEST_TIMEOUT, message=f"Request {method!r} timed out")
        except anyio.get_cancelled_exc_class():
            if written:
                await self._cancel(request_id, "caller cancelled", "caller-cancelled", shield=True)
            raise
        finally:
            del self._pending[request_id]
        outcome = waiter.outcome
        if outcome is None:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        if isinstance(outcome, ErrorData):
            raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
        return outcome

    async def _cancel(self, request_id: str, reason: str, kind: str, *, shield: bool) -> None:
        """The courtesy `notifications/cancelled` (best effort, bounded like the dispatcher's)."""
        params = {"requestId": request_id, "reason": reason}
        line = pydantic_core.to_json({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
        with anyio.move_on_after(_ABANDON_WRITE_TIMEOUT, shield=shield) as scope:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await self._send(line + b"\n")
        if scope.cancelled_caught:
            _cancel_log.warning("courtesy cancel for %s request %r gave up: transport write blocked", kind, request_id)
