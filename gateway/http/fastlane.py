"""The fast lane: a plain tools/call answered without the SDK's server session, in either protocol era.

transport.py hands over a 2026-07-28 POST that asks for nothing to be streamed,
already parsed once (orjson). The lane takes it only when it is a `tools/call`
whose whole answer is one JSON body: a well-formed request (the SDK's own inbound
ladder and per-version params check, so the lane accepts exactly what the SDK
would), from a client that declared no input capability (its call could pause for
an `InputRequiredResult` round), not a resume, with traces off (the SDK path
carries the per-request span). Anything else it declines before doing anything,
and the SDK path serves it as before: nothing is admitted twice.

A handshake-era (2025-11-25) call on an established MCP session comes through
handshake.py, which finds the SDK's session; `taken_on_session` applies the same
rules to what that session's client declared at `initialize` (and leaves a tool
on a per-session upstream, whose logs ride the request's stream, to the SDK).

A taken call runs what the SDK handler runs — the caller context, the
shared-credential check, then `Pipeline.call_tool` (grant, constraints,
reservation, durable record, forward, metering, settlement, result record) under
the same error boundary (`map_errors`, gateway/mcp/server.py) — and the result is dumped once
and written with orjson, shaped as the SDK shapes it in the call's era (2026-07-28:
resultType and the serverInfo stamp, with the HTTP status its error table gives;
handshake era: sieved by that version's schema, errors as its dispatcher writes them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types
import orjson
from mcp.server.lowlevel import Server
from mcp.server.runner import modern_error_data
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, InboundModernRoute, classify_inbound_request
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    JSONRPCError,
)
from mcp_types import methods as spec_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.types import Scope, Send

from gateway.http.headers import RequestHeaders
from gateway.identity.principal import PRINCIPAL, Principal
from gateway.mcp.fanout import Fanout
from gateway.mcp.pipeline import Pipeline
from gateway.mcp.server import SharedCredentials, cannot_ask, map_errors
from gateway.mcp.views import View
from gateway.upstream.caller import CALLER, RELAYED, Caller

log = logging.getLogger("gateway.fastlane")

_ID = (int, str)  # a tuple, built once (an `X | Y` is built at each evaluation)
_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params"})
_PARAMS = frozenset({"name", "arguments", "_meta"})
# The envelope keys the lane knows; any other `_meta` key (a progress token, a log-level opt-in, a trace
# context, an extension's) leaves the request to the SDK path.
_META = frozenset({PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY})


class _NoStream:
    """The downstream of a call that streams nothing back: no progress token, no log-level opt-in (on 2026-07-28)
    or no upstream that relays logs (in the handshake era), and a client that declared nothing it could be asked,
    refused as the SDK path's own downstream refuses it."""

    def __init__(self, sid: str, caller: Caller) -> None:
        self.sid = sid
        self.caller = caller

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        # The SDK path answers a handshake-era request on its SSE stream, which could carry a request.
        refused = cannot_ask(self.caller, request.method, can_send_request=not self.caller.modern)
        assert refused is not None  # the lane takes only clients that declared nothing it relays
        return refused

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        return None


class LaneCall:
    """What the lane took from one request."""

    __slots__ = ("id", "name", "arguments", "version", "capabilities", "info")

    def __init__(
        self,
        request_id: int | str,
        name: str,
        arguments: dict[str, Any] | None,
        version: str,
        capabilities: types.ClientCapabilities,
        info: types.Implementation | None,
    ) -> None:
        self.id = request_id
        self.name = name
        self.arguments = arguments
        self.version = version
        self.capabilities = capabilities
        self.info = info

    @property
    def modern(self) -> bool:
        return self.version in MODERN_PROTOCOL_VERSIONS


class FastLane:
    """One view's lane. `serve` answers a 2026-07-28 request it takes and returns False for one it leaves to the SDK;
    `taken_on_session` and `answer` are the same for a handshake-era call on an SDK session (handshake.py)."""

    def __init__(
        self,
        pipeline: Pipeline,
        shared: SharedCredentials,
        session_ended: Callable[[str], Awaitable[None]],
        view: View,
        server: Server[Any],
        fanout: Fanout,
        *,
        traced: bool,
    ) -> None:
        """`traced`: traces are exported, so every call takes the SDK path (it carries the request's span);
        `fanout` knows the handshake-era sessions the SDK path has served (their SDK session's facts)."""
        self.pipeline = pipeline
        self.shared = shared
        self.session_ended = session_ended
        self.view = view
        self.fanout = fanout
        self.traced = traced
        # The server's identity, fixed at its construction; answers are serialized at once and never kept,
        # so one copy serves every call.
        self.stamp = server.server_info_stamp

    async def serve(self, message: Any, headers: RequestHeaders, scope: Scope, send: Send) -> bool:
        principal = scope.get(PRINCIPAL)  # the edge authenticated the request
        if not isinstance(principal, Principal) or (call := self._taken(message, headers)) is None:
            return False
        status, data = await self.answer(principal, call, headers.mcp_session_id)
        await respond(send, status, data)
        return True

    def _taken(self, message: Any, headers: RequestHeaders) -> LaneCall | None:
        """The call, if this request is one the lane answers exactly as the SDK path would; else None."""
        params = self._plain(message)
        if (
            params is None
            or headers.repeated_routing
            or not (headers.content_type or "").lower().startswith("application/json")
            or not accepted(headers.accept)[0]
        ):
            return None
        meta = params.get("_meta")
        if not isinstance(meta, dict) or not meta.keys() <= _META:
            return None
        route = classify_inbound_request(message, headers=headers.routing())
        if not isinstance(route, InboundModernRoute):
            return None  # the SDK answers the rejection
        try:
            spec_methods.validate_client_request("tools/call", route.protocol_version, params)
            capabilities = types.ClientCapabilities.model_validate(route.client_capabilities, by_name=False)
            info = None if route.client_info is None else types.Implementation.model_validate(route.client_info)
        except (ValidationError, KeyError, ValueError):
            return None  # the SDK answers the invalid params
        if _may_ask(capabilities):
            return None  # the call may pause for this client's answers: an exchange on the SDK path
        return LaneCall(
            message["id"], params["name"], params.get("arguments"), route.protocol_version, capabilities, info
        )

    def taken_on_session(self, message: Any, principal: Principal, session: ServerSession) -> LaneCall | None:
        """The call, if this handshake-era request on `session` (the SDK's own session, which the SDK path has
        served before) is one the lane answers exactly as the SDK path would; else None.

        The SDK path reads the session's negotiated version and its client's `initialize` (capabilities, info);
        `_meta` (a progress token, or anything else) leaves it to the SDK. A tool on a per-session upstream is
        left too: that upstream's log lines are relayed onto the request's SSE stream during the call.
        """
        params = self._plain(message)
        client = session.client_params
        if params is None or "_meta" in params or client is None:
            return None
        try:
            spec_methods.validate_client_request("tools/call", session.protocol_version, params)
        except (ValidationError, KeyError, ValueError):
            return None  # the SDK answers the invalid params
        capabilities = session.client_capabilities or types.ClientCapabilities()  # as the SDK path's caller_of
        if _may_ask(capabilities):
            return None  # the upstream's questions go to the client on the request's SSE stream
        target = self.view.resolve_tool(principal.grant, params["name"])
        if target is not None and target[0].spec.isolation != "shared":
            return None
        arguments = params.get("arguments")
        return LaneCall(
            message["id"], params["name"], arguments, session.protocol_version, capabilities, client.client_info
        )

    def _plain(self, message: Any) -> dict[str, Any] | None:
        """The params of a plain `tools/call` request (no member the lane does not know), with traces off."""
        if (
            self.traced
            or not isinstance(message, dict)
            or message.keys() != _ENVELOPE
            or message["jsonrpc"] != "2.0"
            or message["method"] != "tools/call"
            or isinstance(message["id"], bool)
            or not isinstance(message["id"], _ID)
        ):
            return None
        params = message["params"]
        return params if isinstance(params, dict) and params.keys() <= _PARAMS else None

    async def answer(self, principal: Principal, call: LaneCall, mcp_session: str | None) -> tuple[int, bytes]:
        """The call run as the SDK handler runs it, and its HTTP status and JSON body as the SDK answers it in the
        call's era (handshake era: the message its SSE stream would carry)."""
        caller = Caller(call.capabilities, call.version)
        token = CALLER.set(caller)
        try:
            result = await self._run(principal, call, mcp_session, caller)
            shaped = self._shaped(result) if call.modern else _serialized(result, call.version)
            return 200, orjson.dumps({"jsonrpc": "2.0", "id": call.id, "result": shaped})
        except Exception as exc:  # the SDK's exception-to-wire mapping, logging included
            if not call.modern:
                return 200, _legacy_error(call.id, exc)
            error = modern_error_data(exc).model_dump(mode="json", by_alias=True, exclude_none=True)
            data = orjson.dumps({"jsonrpc": "2.0", "id": call.id, "error": error})
            return ERROR_CODE_HTTP_STATUS.get(error["code"], 200), data
        finally:
            CALLER.reset(token)

    async def _run(
        self, principal: Principal, call: LaneCall, mcp_session: str | None, caller: Caller
    ) -> types.CallToolResult:
        info = call.info
        fields = {  # the request fields gateway/mcp/server.py records
            "mcp_session": mcp_session,
            "protocol_version": call.version,
            "client": info.name if info else None,
        }
        async with map_errors(call.modern, lambda: self.session_ended(principal.sid)):
            await self.shared.check(principal, *((info.name, info.version) if info else (None, None)))
            result = await self.pipeline.call_tool(
                self.view,
                principal,
                call.name,
                call.arguments,
                fields,
                _NoStream(principal.sid, caller),
            )
        assert isinstance(result, types.CallToolResult)  # no pause: the lane took no client that can answer
        return result

    def _shaped(self, result: types.CallToolResult) -> dict[str, Any]:
        """The result's wire form, as the SDK's serializer gives it on 2026-07-28: the server's identity stamped
        into `_meta` unless the result carries one."""
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)  # resultType included
        meta = dumped.get("_meta")
        if meta is None:
            dumped["_meta"] = {SERVER_INFO_META_KEY: self.stamp}
        elif isinstance(meta, Mapping) and meta.get(SERVER_INFO_META_KEY) is None:
            dumped["_meta"] = {**meta, SERVER_INFO_META_KEY: self.stamp}
        return dumped


async def respond(send: Send, status: int, data: bytes, mcp_session: str | None = None) -> None:
    """One JSON body; the MCP session's id on it as the SDK's transport puts it on each of its answers."""
    headers = [(b"content-length", str(len(data)).encode()), (b"content-type", b"application/json")]
    if mcp_session is not None:
        headers.append((b"mcp-session-id", mcp_session.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _may_ask(capabilities: types.ClientCapabilities) -> bool:
    return any(getattr(capabilities, key, None) is not None for key in RELAYED)


def _serialized(result: types.CallToolResult, version: str) -> dict[str, Any]:
    """The result's wire form in a handshake era, as the SDK's serializer gives it: sieved by that version's schema
    (no resultType, no serverInfo stamp).

    Raises:
        MCPError: the result breaks that schema (the SDK's answer to a handler's invalid result).
    """
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    try:
        return spec_methods.serialize_server_result("tools/call", version, dumped)
    except ValidationError:
        log.exception("handler for 'tools/call' returned an invalid result")
        raise MCPError(code=types.INTERNAL_ERROR, message="Handler returned an invalid result") from None


def _legacy_error(request_id: int | str, exc: Exception) -> bytes:
    """A handshake-era handler's exception as the SDK's dispatcher writes it (code 0 for an unmapped one)."""
    error = handler_exception_to_error_data(exc)
    if error is None:
        log.exception("handler for 'tools/call' raised")
        error = types.ErrorData(code=0, message=str(exc))
    return (
        JSONRPCError(jsonrpc="2.0", id=request_id, error=error)
        .model_dump_json(by_alias=True, exclude_unset=True)
        .encode()
    )


def accepted(accept: str | None) -> tuple[bool, bool]:
    """The SDK's Accept check (`check_accept_headers`): whether JSON, and whether SSE, are accepted (wildcards
    included)."""
    types_ = {part.strip().split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return bool(types_ & {"*/*", "application/json", "application/*"}), bool(
        types_ & {"*/*", "text/event-stream", "text/*"}
    )
