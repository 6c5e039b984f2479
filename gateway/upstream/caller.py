"""The calling client, as the upstream should see it: what it declared it can answer, and its era.

The front sets `CALLER` for each inbound request; tasks started while serving it (an exchange's
background call) inherit it. Connections read it to declare upstream exactly what the caller
declared: per request on 2026-07-28, per connection on a per_session handshake-era connection.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

# The client capabilities a gateway can relay: requests the upstream sends back to the caller.
RELAYED = ("sampling", "elicitation", "roots")
_METHOD_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


@dataclass(frozen=True)
class Caller:
    capabilities: types.ClientCapabilities
    protocol_version: str | None

    @property
    def modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS

    def declared(self) -> dict[str, Any]:
        """The caller's relayable capabilities as the `_meta` envelope carries them."""
        declared: dict[str, Any] = {}
        for key in RELAYED:
            value = getattr(self.capabilities, key, None)
            if value is not None:
                declared[key] = value.model_dump(by_alias=True, mode="json", exclude_none=True)
        return declared

    def has(self, capability: str) -> bool:
        return getattr(self.capabilities, capability, None) is not None

    def answers(self, method: str) -> bool:
        """Whether the caller declared the capability an input request of `method` needs."""
        capability = _METHOD_CAPABILITY.get(method)
        return capability is not None and self.has(capability)


CALLER: ContextVar[Caller | None] = ContextVar("gateway_caller", default=None)
