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
that follows lines handed to the session while its call was pending (a log line the call caused, say) waits
its turn in the session's read stream (upstream/lanes.py), so a log relayed to the caller's stream is never
overtaken by the answer that closes it.

`request` keeps the dispatcher's semantics (`JSONRPCDispatcher.send_raw_request`): the progress token is the
request id (progress notifications for it are routed to the callback and still teed to the session, as the
dispatcher tees them); the read timeout runs from the write and ends in a courtesy `notifications/cancelled`
and MCPError(REQUEST_TIMEOUT); a cancelled caller sends that cancel shielded; an error answer raises the
MCPError the dispatcher raises; the pipe closing fails every waiter with MCPError(CONNECTION_CLOSED) at
once. Lines are read and written with pydantic-core, the parser and serializer the SDK path uses, so every
value (an integer beyond 64 bits, an infinity sent as null) is what the SDK path would read and write.

Private SDK members, unavoidable to reuse rather than copy: the stdio helpers and timeouts of
`mcp.client.stdio` (the dispatcher's, for the timeout and the courtesy cancel, in upstream/lanes.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.lowlevel
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.text import TextReceiveStream
from mcp.client._transport import TransportStreams
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
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, ErrorData

from gateway.upstream.lanes import (
    MARK,
    PREFIX,
    InOrder,
    Item,
    SessionStream,
    Waiter,
    encoded,
    exchange,
    plain_answer,
    routed,
    settled,
    traced,
)

_pipes_log = logging.getLogger("mcp.client.stdio")  # its lines keep stdio_client's logger name


class StdioTransport:
    """One spawn of a stdio server: `open()` is `stdio_client(server, errlog)`; `request` is the lean path."""

    def __init__(self, server: StdioServerParameters, errlog: TextIO) -> None:
        self._server = server
        self._errlog = errlog
        self._lock = anyio.Lock(fast_acquire=True)
        self._pending: dict[str, Waiter] = {}
        self._next_id = 0
        self._closed = True  # until open() runs, and again once the pipes are gone
        self._shutting_down = False
        self._stdin: anyio.abc.ByteSendStream | None = None
        self._to_session: MemoryObjectSendStream[Item] | None = None
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
        to_session, read_stream = anyio.create_memory_object_stream[Item](0)
        write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)
        assert process.stdin is not None and process.stdout is not None
        self._stdin, self._to_session, self._closed = process.stdin, to_session, False
        writer_done = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._read, process, to_session)
            tg.start_soon(self._write_session, from_session, writer_done)
            try:
                yield SessionStream(read_stream), write_stream
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

    async def _read(self, process: ServerProcess, to_session: MemoryObjectSendStream[Item]) -> None:
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
                            answer: tuple[Waiter, dict[str, Any] | ErrorData] | None = None
                            if self._pending and MARK in line:
                                answer = plain_answer(line, self._pending)
                            if answer is None:
                                item = _parse_line(line)
                                if self._pending and isinstance(item, SessionMessage):
                                    answer = routed(item.message, self._pending, self._tg)
                            if answer is not None and answer[0].handed == self._handed:
                                answer[0].settle(answer[1])  # nothing reached the session meanwhile
                                continue
                            try:
                                await to_session.send(item if answer is None else InOrder(*answer))
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

    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        timeout: float | None,
        on_progress: ProgressFnT | None,
    ) -> dict[str, Any] | None:
        """The raw result of `method`, as `send_raw_request(method, params, {"timeout": ..., "on_progress": ...})`
        returns it (`headers` are HTTP's: a pipe has none); None, before anything is sent, when this path cannot
        send exactly what that one would.

        Declines when a global tracer provider is installed (the dispatcher's span would then be a new one,
        its context on the request), or when the params do not serialize.

        Raises:
            MCPError: the server's error answer; REQUEST_TIMEOUT after `timeout`; CONNECTION_CLOSED.
        """
        if traced():
            return None
        if self._closed:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        self._next_id += 1
        request_id = f"{PREFIX}{self._next_id}"
        try:
            line = encoded(method, params, request_id, on_progress) + b"\n"
        except pydantic_core.PydanticSerializationError:
            return None
        waiter = self._pending[request_id] = Waiter(on_progress, self._handed)

        async def send() -> None:
            try:
                await self._send(line)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                self._lost()
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None

        try:
            await exchange(method, request_id, timeout, send, waiter.answered.wait, self._cancel)
        finally:
            del self._pending[request_id]
        return settled(waiter.outcome)

    async def _cancel(self, params: dict[str, Any]) -> None:
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
        await self._send(pydantic_core.to_json(cancel) + b"\n")
