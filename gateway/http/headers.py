"""The request headers the gateway reads, from one pass over the ASGI scope.

The edge (Host, Origin, the bearer and its DPoP proofs, Mcp-Session-Id, the
protocol version) and the MCP transport (content length and type, Accept, the
routing headers the 2026-07-28 fast lane checks) read the same object, which the
first of them to ask puts in the scope, instead of each scanning the header list
again. A header given more than once counts by its first value (DPoP proofs: all
of them, in order); a repeated routing header is only noted, for the lane to
leave the request to the SDK, which refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER
from starlette.types import Scope

HEADERS = "gateway.headers"  # the scope key

_SINGLE = {
    b"host": "host",
    b"origin": "origin",
    b"authorization": "authorization",
    b"mcp-session-id": "mcp_session_id",
    MCP_PROTOCOL_VERSION_HEADER.encode(): "protocol_version",
    MCP_METHOD_HEADER.encode(): "mcp_method",
    MCP_NAME_HEADER.encode(): "mcp_name",
    b"content-length": "content_length",
    b"content-type": "content_type",
    b"accept": "accept",
}
_ROUTING = frozenset({"protocol_version", "mcp_method", "mcp_name"})


@dataclass(slots=True)
class RequestHeaders:
    host: str | None = None
    origin: str | None = None
    authorization: str | None = None
    mcp_session_id: str | None = None
    protocol_version: str | None = None
    mcp_method: str | None = None
    mcp_name: str | None = None
    content_length: str | None = None
    content_type: str | None = None
    accept: str | None = None
    dpop: list[str] = field(default_factory=list)
    repeated_routing: bool = False  # MCP-Protocol-Version, Mcp-Method or Mcp-Name given more than once

    @classmethod
    def of(cls, scope: Scope) -> RequestHeaders:
        """This request's headers: read once, then kept in the scope."""
        known = scope.get(HEADERS)
        if isinstance(known, RequestHeaders):
            return known
        found: dict[str, str] = {}
        dpop: list[str] = []
        repeated = False
        for key, value in scope["headers"]:
            if key == b"dpop":
                dpop.append(value.decode("latin-1"))
            elif (name := _SINGLE.get(key)) is not None:
                if name not in found:
                    found[name] = value.decode("latin-1")
                elif name in _ROUTING:
                    repeated = True
        headers = cls(**found, dpop=dpop, repeated_routing=repeated)
        scope[HEADERS] = headers
        return headers

    def routing(self) -> dict[str, str]:
        """The routing headers as the SDK's inbound ladder reads them (lowercase names)."""
        pairs = (
            (MCP_PROTOCOL_VERSION_HEADER, self.protocol_version),
            (MCP_METHOD_HEADER, self.mcp_method),
            (MCP_NAME_HEADER, self.mcp_name),
        )
        return {name: value for name, value in pairs if value is not None}
