"""The fast lane: a plain 2026-07-28 tools/call answered without the SDK's server session.

transport.py hands over a 2026-07-28 POST that asks for nothing to be streamed,
already parsed once (orjson). The lane takes it only when it is a `tools/call`
whose whole answer is one JSON body: a well-formed request (the SDK's own inbound
ladder and per-version params check, so the lane accepts exactly what the SDK
would), from a client that declared no input capability (its call could pause for
an `InputRequiredResult` round), not a resume, with traces off (the SDK path
carries the per-request span). Anything else it declines before doing anything,
and the SDK path serves it as before: nothing is admitted twice.

A taken call runs what the SDK handler runs — the caller context, the
shared-credential check, then `Pipeline.call_tool` (grant, constraints,
reservation, durable record, forward, metering, settlement, result record) under
the same error boundary (`map_errors`, gateway/mcp/server.py) — and the result is dumped once
and written with orjson, shaped as the SDK shapes it (resultType, the serverInfo
stamp) with the HTTP status its error table gives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types
import orjson
from mcp.server.lowlevel import Server
from mcp.server.runner import modern_error_data
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, InboundModernRoute, classify_inbound_request
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
)
from mcp_types import methods as spec_methods
from pydantic import ValidationError
from starlette.types import Scope, Send

from gateway.http.headers import RequestHeaders
from gateway.identity.principal import PRINCIPAL, Principal
from gateway.mcp.pipeline import Pipeline
from gateway.mcp.server import SharedCredentials, map_errors
from gateway.mcp.views import View
from gateway.upstream.caller import CALLER, RELAYED, Caller

_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params"})
_PARAMS = frozenset({"name", "arguments", "_meta"})
# The envelope keys the lane knows; any other `_meta` key (a progress token, a log-level opt-in, a trace
# context, an extension's) leaves the request to the SDK path.
_META = frozenset({PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY})
_CANNOT_ASK = types.ErrorData(code=types.INVALID_REQUEST, message="the client cannot receive requests")


class _NoStream:
    """The downstream of a call that streams nothing back: no progress token, no log-level opt-in, and a
    2026-07-28 client that cannot be asked anything in the middle of a call (as the SDK path's own answers)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        return _CANNOT_ASK

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        return None


class _Call:
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


class FastLane:
    """One view's lane; `serve` answers a request it takes and returns False for one it leaves to the SDK."""

    def __init__(
        self,
        pipeline: Pipeline,
        shared: SharedCredentials,
        session_ended: Callable[[str], Awaitable[None]],
        view: View,
        server: Server[Any],
        *,
        traced: bool,
    ) -> None:
        """`traced`: traces are exported, so every call takes the SDK path (it carries the request's span)."""
        self.pipeline = pipeline
        self.shared = shared
        self.session_ended = session_ended
        self.view = view
        self.traced = traced
        # The server's identity, fixed at its construction; answers are serialized at once and never kept,
        # so one copy serves every call.
        self.stamp = server.server_info_stamp

    async def serve(self, message: Any, headers: RequestHeaders, scope: Scope, send: Send) -> bool:
        principal = scope.get(PRINCIPAL)  # the edge authenticated the request
        if not isinstance(principal, Principal) or (call := self._taken(message, headers)) is None:
            return False
        token = CALLER.set(Caller(call.capabilities, call.version))
        try:
            result = await self._answer(principal, call, headers.mcp_session_id)
            body = {"jsonrpc": "2.0", "id": call.id, "result": self._shaped(result)}
            status = 200
        except Exception as exc:  # the SDK's exception-to-wire mapping, logging included
            error = modern_error_data(exc).model_dump(mode="json", by_alias=True, exclude_none=True)
            body = {"jsonrpc": "2.0", "id": call.id, "error": error}
            status = ERROR_CODE_HTTP_STATUS.get(error["code"], 200)
        finally:
            CALLER.reset(token)
        data = orjson.dumps(body)
        start_headers = [(b"content-length", str(len(data)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        await send({"type": "http.response.body", "body": data})
        return True

    def _taken(self, message: Any, headers: RequestHeaders) -> _Call | None:
        """The call, if this request is one the lane answers exactly as the SDK path would; else None."""
        if (
            self.traced
            or not isinstance(message, dict)
            or message.keys() != _ENVELOPE
            or message["jsonrpc"] != "2.0"
            or message["method"] != "tools/call"
            or isinstance(message["id"], bool)
            or not isinstance(message["id"], int | str)
            or headers.repeated_routing
            or not (headers.content_type or "").lower().startswith("application/json")
            or not _accepts_json(headers.accept)
        ):
            return None
        params = message["params"]
        if not isinstance(params, dict) or not params.keys() <= _PARAMS:
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
        if any(getattr(capabilities, key, None) is not None for key in RELAYED):
            return None  # the call may pause for this client's answers: an exchange on the SDK path
        arguments = params.get("arguments")
        return _Call(message["id"], params["name"], arguments, route.protocol_version, capabilities, info)

    async def _answer(self, principal: Principal, call: _Call, mcp_session: str | None) -> types.CallToolResult:
        info = call.info
        fields = {  # the request fields gateway/mcp/server.py records
            "mcp_session": mcp_session,
            "protocol_version": call.version,
            "client": info.name if info else None,
        }
        async with map_errors(True, lambda: self.session_ended(principal.sid)):
            await self.shared.check(principal, *((info.name, info.version) if info else (None, None)))
            result = await self.pipeline.call_tool(
                self.view, principal, call.name, call.arguments, fields, _NoStream(principal.sid)
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


def _accepts_json(accept: str | None) -> bool:
    """The SDK's JSON-mode Accept check (`check_accept_headers`): JSON, or a wildcard covering it."""
    types_ = {part.strip().split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return bool(types_ & {"*/*", "application/json", "application/*"})
