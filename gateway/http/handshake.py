"""The fast lane on a handshake-era MCP session: a 2025-11-25 client's tools/call answered as one JSON body.

The spec lets a server answer a POSTed request with one `application/json` body instead of an SSE stream, and
clients must accept both. The SDK opens a stream for every request of a handshake-era session (a priming
event, the event store, a task pair); when nothing but the answer would ever go on it, the fast lane
(fastlane.py, the same code as on 2026-07-28) answers instead. It takes a request only on a session the SDK
path itself would serve it on: one in this view's session table, live, owned by the request's credential (the
SDK answers anything else, its 404 included), which the SDK path has served before (the fan-out knows it:
its negotiated version and its client's `initialize` are read from there), with the protocol header that
session negotiated, and the Accept and Content-Type the SDK's SSE mode requires. fastlane.py decides the rest.

The SDK session must not notice: a lane call holds the session against its idle timeout, as the transport
holds it for each request it serves; a `notifications/cancelled` for it cuts it, as the SDK's dispatcher cuts
its own requests (answered with the error the SDK's stream ends such a request with); the session's end
(DELETE, idle timeout, revocation) cuts it, answered as the SDK answers a JSON request whose session ended.

It reads the SDK's session table (`_server_instances`, `_session_owners`), overrides `_discard_session` and
keeps the transport's in-flight count (`_requests_in_flight`, `_idle_timeout`): the SDK offers no public
way to ask for a session, to hear of its end, or to hold it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http import REQUEST_CANCELLED, StreamableHTTPServerTransport
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError, RequestId
from starlette.types import Scope, Send

from gateway.http.fastlane import FastLane, accepted, respond
from gateway.http.headers import RequestHeaders
from gateway.http.resumable import ResumableSessionManager
from gateway.identity.principal import PRINCIPAL, Principal

# What the SDK answers a JSON request whose session ended while it was in flight.
_ENDED = (
    500,
    JSONRPCError(
        jsonrpc="2.0",
        id=None,
        error=ErrorData(code=INTERNAL_ERROR, message="Session terminated before the request completed"),
    )
    .model_dump_json(by_alias=True, exclude_unset=True)
    .encode(),
)


class _Cut:
    """One lane call in flight on a session: the scope that cuts it, and the answer it then gets."""

    def __init__(self, request_id: RequestId) -> None:
        self.id = request_id
        self.scope = anyio.CancelScope()
        self.answer: tuple[int, bytes] | None = None

    def settle(self, answer: tuple[int, bytes]) -> None:
        """The call's answer, unless it was cut first (a cancelled request's result is dropped, as the SDK drops it)."""
        self.answer = self.answer or answer

    def cut(self, answer: tuple[int, bytes]) -> None:
        self.settle(answer)
        self.scope.cancel()


class LaneSessionManager(ResumableSessionManager):
    """The streaming session manager, which also serves the fast lane's calls on its sessions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lane_calls: dict[str, dict[RequestId, _Cut]] = {}  # Mcp-Session-Id -> request id -> its cut

    async def serve(self, lane: FastLane, message: Any, headers: RequestHeaders, scope: Scope, send: Send) -> bool:
        """Answer a tools/call the lane takes; cut the lane call a `notifications/cancelled` names (the SDK still
        answers that); return False for anything left to the SDK."""
        mcp_session = headers.mcp_session_id
        transport = self._live(mcp_session, scope, headers) if mcp_session is not None else None
        principal = scope.get(PRINCIPAL)
        if mcp_session is None or transport is None or not isinstance(principal, Principal):
            return False
        if isinstance(message, dict) and message.get("method") == "notifications/cancelled":
            self._cancelled(mcp_session, message)
            return False
        listener = lane.fanout.session_listener(mcp_session)
        session = listener.session if listener is not None else None
        if session is None or headers.protocol_version != session.protocol_version:
            return False
        call = lane.taken_on_session(message, principal, session)
        if call is None:
            return False
        with _held(transport), self._cuttable(mcp_session, call.id) as cut:
            cut.settle(await lane.answer(principal, call, mcp_session))
        assert cut.answer is not None  # answered, or cut with the answer it gets
        await respond(send, *cut.answer, mcp_session)
        return True

    def _live(self, mcp_session: str, scope: Scope, headers: RequestHeaders) -> StreamableHTTPServerTransport | None:
        """The session's transport, if the SDK would serve this POST on it (as `_handle_stateful_request` and the
        transport check: known, owned by this credential, not ended nor ending, SSE-mode Accept, JSON body)."""
        transport = self._server_instances.get(mcp_session)
        if transport is None or transport.is_terminated:
            return None
        if transport.idle_scope is not None and transport.idle_scope.cancel_called:
            return None
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if requestor != self._session_owners.get(mcp_session):
            return None
        content_type = headers.content_type or ""
        if not (
            content_type.lower().startswith("application/json")
            and "application/json" in (part.strip() for part in content_type.split(";")[0].split(","))
            and all(accepted(headers.accept))
        ):
            return None
        return transport

    def _cancelled(self, mcp_session: str, message: dict[str, Any]) -> None:
        """A `notifications/cancelled` for a lane call in flight cuts it, as the dispatcher cuts its own."""
        if message.get("jsonrpc") != "2.0" or "id" in message:
            return
        params = message.get("params")
        request_id = cancelled_request_id_from_params(params if isinstance(params, dict) else None)
        cut = (
            self._lane_calls.get(mcp_session, {}).get(coerce_request_id(request_id)) if request_id is not None else None
        )
        if cut is not None:  # answered under the call's own id, as the SDK ends a cancelled request's stream
            error = ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
            body = JSONRPCError(jsonrpc="2.0", id=cut.id, error=error)
            cut.cut((200, body.model_dump_json(by_alias=True, exclude_unset=True).encode()))

    @contextlib.contextmanager
    def _cuttable(self, mcp_session: str, request_id: RequestId) -> Iterator[_Cut]:
        cut = _Cut(request_id)
        calls = self._lane_calls.setdefault(mcp_session, {})
        key = coerce_request_id(request_id)
        calls[key] = cut  # a duplicate id overwrites, as in the SDK's dispatcher
        try:
            with cut.scope:
                yield cut
        finally:
            if calls.get(key) is cut:
                del calls[key]
            if not calls and self._lane_calls.get(mcp_session) is calls:
                del self._lane_calls[mcp_session]

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        for cut in self._lane_calls.pop(session_id, {}).values():
            cut.cut(_ENDED)
        await super()._discard_session(session_id, transport)


@contextlib.contextmanager
def _held(transport: StreamableHTTPServerTransport) -> Iterator[None]:
    """Hold the session as the transport's `handle_request` does: no idle countdown while a request is in flight,
    and a fresh one from when the last ends."""
    idle, timeout = transport.idle_scope, transport._idle_timeout
    if idle is None or timeout is None:
        yield
        return
    transport._requests_in_flight += 1
    idle.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle.deadline = anyio.current_time() + timeout
