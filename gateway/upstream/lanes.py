"""What the lean tools/call paths (stdio.py, http_transport.py) share: which session has one, and keeping order.

A connection binds its transport's lane to the session it opened (`bind`); upstream/lean.py asks `lane(session)`.
A lean request's id comes from a space of its own (`lean-N`: never one of the dispatcher's integers, nor a
string it would coerce to one). Its answer is settled straight to its waiter, unless messages of its own
(a log line the call caused, say) were handed to the session while it was pending: then the answer goes
through the session's read stream as an `InOrder` and is settled as the session takes it, after those
messages, exactly the order the dispatcher would have kept. `SessionStream` is that read stream. `exchange`
holds the dispatcher's timeout and cancellation semantics around one lean request.

Private SDK members, unavoidable to reuse rather than copy: the dispatcher's `_shielded_progress` and its
abandon-write bound.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import pydantic_core
from mcp.client.session import ClientSession
from mcp.shared._otel import inject_trace_context
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import _ABANDON_WRITE_TIMEOUT, _shielded_progress
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ErrorData
from mcp_types.jsonrpc import JSONRPCError, JSONRPCMessage, JSONRPCNotification, JSONRPCResponse
from opentelemetry import trace

_cancel_log = logging.getLogger("mcp.shared.jsonrpc_dispatcher")  # the dispatcher's logger, for its cancel's line

T = TypeVar("T")

PREFIX = "lean-"
MARK = f'"{PREFIX}'  # in every message that carries a lean id: those without it skip the lean parse


def traced() -> bool:
    """A global tracer provider is installed: the dispatcher's span would be a new one, its context on the request,
    so the lanes decline."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def exchange(
    method: str,
    request_id: str,
    timeout: float | None,
    send: Callable[[], Awaitable[None]],
    answer: Callable[[], Awaitable[T]],
    cancel: Callable[[dict[str, Any]], Awaitable[None]],
) -> T:
    """`send` a lean request, then await its `answer`, with the dispatcher's semantics (`send_raw_request`): the
    read timeout runs from the write and ends in a courtesy `notifications/cancelled` (its params written by
    `cancel`) and MCPError(REQUEST_TIMEOUT); a caller cancelled once the write began sends that cancel shielded.

    Raises:
        MCPError: REQUEST_TIMEOUT after `timeout`; whatever `send` and `answer` raise.
    """
    written = False
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
        written = True
        await send()
        with anyio.move_on_after(timeout) as clock:
            answered = await answer()
        if clock.cancelled_caught:
            await _courtesy_cancel(cancel, request_id, f"timed out after {timeout}s", "timed-out", shield=False)
            raise MCPError(code=REQUEST_TIMEOUT, message=f"Request {method!r} timed out")
        return answered
    except anyio.get_cancelled_exc_class():
        if written:
            await _courtesy_cancel(cancel, request_id, "caller cancelled", "caller-cancelled", shield=True)
        raise


async def _courtesy_cancel(
    cancel: Callable[[dict[str, Any]], Awaitable[None]], request_id: str, reason: str, kind: str, *, shield: bool
) -> None:
    """Best effort, bounded like the dispatcher's."""
    with anyio.move_on_after(_ABANDON_WRITE_TIMEOUT, shield=shield) as scope:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await cancel({"requestId": request_id, "reason": reason})
    if scope.cancelled_caught:
        _cancel_log.warning("courtesy cancel for %s request %r gave up: transport write blocked", kind, request_id)


def settled(outcome: dict[str, Any] | ErrorData | None) -> dict[str, Any]:
    """A waiter's outcome as `send_raw_request` ends: the result, or the MCPError it raises (None: the connection
    closed)."""
    if outcome is None:
        raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
    if isinstance(outcome, ErrorData):
        raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
    return outcome


def encoded(method: str, params: Mapping[str, Any], request_id: str, on_progress: ProgressFnT | None) -> bytes:
    """The request as `send_raw_request` would write it, with the lean id (progress token too, if asked), in
    pydantic-core's JSON: `model_dump_json`'s bytes (integers beyond 64 bits, infinities as null).

    Raises:
        pydantic_core.PydanticSerializationError: the params do not serialize.
    """
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
    return pydantic_core.to_json(envelope, inf_nan_mode="null")


class Lane(Protocol):
    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        timeout: float | None,
        on_progress: ProgressFnT | None,
    ) -> dict[str, Any] | None:
        """The raw result, as `send_raw_request(method, params, {"headers": ..., "timeout": ...,
        "on_progress": ...})` returns it; None, having changed nothing, when the lane cannot do what that would.

        Raises:
            MCPError: as `send_raw_request` raises it.
        """
        ...


_LANES: weakref.WeakKeyDictionary[ClientSession, Lane] = weakref.WeakKeyDictionary()


def lane(session: ClientSession) -> Lane | None:
    """The lane under `session`, if its connection bound one (`bind`)."""
    return _LANES.get(session)


def bind(session: ClientSession, lane: Lane) -> None:
    _LANES[session] = lane


class Waiter:
    __slots__ = ("answered", "outcome", "on_progress", "handed")

    def __init__(self, on_progress: ProgressFnT | None, handed: int) -> None:
        self.answered = anyio.Event()
        self.outcome: dict[str, Any] | ErrorData | None = None  # None once answered: the connection closed
        self.on_progress = on_progress
        self.handed = handed  # what had been handed to the session when the request went out

    def settle(self, outcome: dict[str, Any] | ErrorData | None) -> None:
        if not self.answered.is_set():  # a second answer to one id is dropped, as the dispatcher drops it
            self.outcome = outcome
            self.answered.set()


class InOrder:
    """A lean answer that waits its turn in the session's read stream (see the module docstring)."""

    __slots__ = ("waiter", "outcome")

    def __init__(self, waiter: Waiter, outcome: dict[str, Any] | ErrorData) -> None:
        self.waiter = waiter
        self.outcome = outcome


Item = SessionMessage | Exception | InOrder


class _Receiving(Protocol):
    async def receive(self) -> Item: ...

    async def aclose(self) -> None: ...


class SessionStream:
    """The session's read stream: it settles the `InOrder` answers it passes, and hands on everything else."""

    def __init__(self, inner: _Receiving) -> None:
        self._inner = inner

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, InOrder):
                return item
            item.waiter.settle(item.outcome)

    def __aiter__(self) -> SessionStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> SessionStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def plain_answer(text: str | bytes, pending: Mapping[str, Waiter]) -> tuple[Waiter, dict[str, Any]] | None:
    """A pending lean request's waiter and its result from a plain result message, parsed once; else None (the
    message then takes the SDK's parse)."""
    try:
        message = pydantic_core.from_json(text, cache_strings="keys")  # values (texts, ids) would fill its cache
    except ValueError:
        return None
    if type(message) is not dict or message.get("jsonrpc") != "2.0" or "method" in message or "error" in message:
        return None
    request_id, result = message.get("id"), message.get("result")
    waiter = pending.get(request_id) if type(request_id) is str else None
    if waiter is None or type(result) is not dict:
        return None
    return waiter, result


def outcome_of(message: JSONRPCResponse | JSONRPCError) -> dict[str, Any] | ErrorData:
    return message.result if isinstance(message, JSONRPCResponse) else message.error


ANSWER = (JSONRPCResponse, JSONRPCError)  # a response or an error: a tuple, built once (`X | Y` is built each time)


def routed(
    message: JSONRPCMessage, pending: Mapping[str, Waiter], tg: anyio.abc.TaskGroup | None
) -> tuple[Waiter, dict[str, Any] | ErrorData] | None:
    """A pending lean request's waiter and its outcome from a validated answer, or None. A progress notification
    for one goes to its callback, on a task of its own, as the dispatcher routes it (and the notification is
    still handed on to the session, as the dispatcher tees it)."""
    if isinstance(message, ANSWER):
        waiter = pending.get(message.id) if isinstance(message.id, str) else None
        if waiter is None:
            return None
        return waiter, outcome_of(message)
    if not (isinstance(message, JSONRPCNotification) and message.method == "notifications/progress"):
        return None
    match message.params:  # the dispatcher's own test of a progress notification
        case {"progressToken": str() as token, "progress": int() | float() as progress, **fields} if (
            not isinstance(progress, bool)
            and (waiter := pending.get(token)) is not None
            and waiter.on_progress is not None
            and tg is not None
        ):
            total, text = fields.get("total"), fields.get("message")
            tg.start_soon(
                _shielded_progress(waiter.on_progress),
                float(progress),
                float(total) if isinstance(total, int | float) else None,
                text if isinstance(text, str) else None,
            )
    return None
