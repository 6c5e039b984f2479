"""A plain tools/call sent on a connection's own dispatcher, without the SDK ClientSession's request models.

`ClientSession.call_tool` builds a `CallToolRequest` model only to dump it again, then checks the
raw result against the negotiated version's wire surface (a full pydantic validation) before
validating it a second time into the result model. For the first round of a call, whose request
the gateway builds itself, neither pays: the request is written as a dict, stamped by the session's
own stamp (so the caller's `_meta` declaration, gateway/upstream/connection.py, and the era's
headers are exactly what the SDK would send), and sent through the session's own dispatcher —
the same pipes, id correlation, progress routing, timeout and `notifications/cancelled` on
abandonment — and its result is validated once, into the same result union the session uses.

The request skips the dispatcher too: the connection's own transport writes it to the pipe
(gateway/upstream/stdio.py) or POSTs it (gateway/upstream/http_transport.py) and hands its answer back with the
dispatcher's semantics; it declines (and the dispatcher sends it) when it cannot do exactly what that would.

Later rounds (input responses, request state) keep `ClientSession.call_tool`.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.client.extension import UnexpectedClaimedResult
from mcp.client.session import ClientSession, _later_revision_fields
from mcp.shared.dispatcher import CallOptions, ProgressFnT
from mcp.shared.inbound import MCP_NAME_HEADER, encode_header_value
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.upstream import lanes
from gateway.upstream.connection import complete_by_default


async def call_tool(
    session: ClientSession,
    name: str,
    arguments: dict[str, Any] | None,
    *,
    meta: dict[str, Any] | None = None,
    progress_callback: ProgressFnT | None = None,
) -> types.CallToolResult | types.InputRequiredResult:
    """One first-round tools/call of `name`, answered as `ClientSession.call_tool(..., allow_input_required=True)`.

    Raises:
        MCPError: the server's error answer, or a closed connection (as the session raises them).
        pydantic.ValidationError: the result is not a tool result.
        RuntimeError: structured content that breaks the tool's output schema (the session's own check).
        UnexpectedClaimedResult: an extension's result shape.
    """
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    if meta:
        params["_meta"] = dict(meta)
    data: dict[str, Any] = {"method": "tools/call", "params": params}
    opts: CallOptions = {}
    session._stamp(data, opts)  # the era's _meta and headers, the caller's capabilities (connection.py)
    timeout = session._session_read_timeout_seconds
    headers = opts.setdefault("headers", {})
    headers.setdefault(MCP_NAME_HEADER, encode_header_value(name))
    transport = lanes.lane(session)
    raw = None
    if transport is not None:  # straight to the pipe or the HTTP endpoint (stdio.py, http_transport.py), or declined
        raw = await transport.request(
            "tools/call", data["params"], headers, timeout=timeout, on_progress=progress_callback
        )
        if raw is not None and session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            complete_by_default(raw)  # as the connection's watched read stream does
    if raw is None:
        if timeout is not None:
            opts["timeout"] = timeout
        if progress_callback is not None:
            opts["on_progress"] = progress_callback
        raw = await session._dispatcher.send_raw_request("tools/call", data["params"], opts)
    foreign = _later_revision_fields("tools/call", session._negotiated_version or "2025-11-25")
    if not foreign.isdisjoint(raw):  # a later revision's fields, outside the negotiated contract (as the session)
        raw = {key: value for key, value in raw.items() if key not in foreign}
    result = session._call_tool_adapter.validate_python(raw, by_name=False)
    if isinstance(result, types.CallToolResult):
        if not result.is_error:
            await session.validate_tool_result(name, result)
        return result
    if isinstance(result, types.InputRequiredResult):
        return result
    raise UnexpectedClaimedResult(result)
