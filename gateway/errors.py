"""The gateway's one exception tree, and the JSON-RPC answer each one gets inside an MCP request.

Every layer raises one of these; the HTTP edge and the MCP front translate them
into the answers docs/design.md's Errors table fixes, in one place each (the
front's is `gateway.mcp.server.map_errors`, which reads `code`, `rpc_message()`
and `rpc_data()` off the exception: the wire shape lives with the class).

    GatewayError                          JSON-RPC code inside an MCP request
    ├── ConfigError           a bad file, field or CLI argument (startup, CLI)
    │   └── ConfigNotFound    gateway.yaml is not where the command looked
    ├── OperatorError         an operator action cannot be done (CLI exit 1, admin API 4xx)
    ├── AuthError             HTTP 401 invalid_token (bad token, ended session)     -32014 mid-request
    ├── Unavailable           HTTP 503: identity, session store or audit sink down  -32011
    │   ├── StoreUnavailable
    │   └── AuditUnavailable
    ├── Stopped               budget, rate or loop stop: tool result isError        -32010 on other methods
    ├── UpstreamError         upstream down, crashed or failed: tool result isError -32603 on other methods
    │   └── UpstreamTimeout
    ├── NotFound              not granted, or no such thing: one answer for both    -32602
    │   ├── UnknownTool
    │   ├── UnknownPrompt
    │   └── ResourceNotFound                                                        -32002 on 2025-11-25
    └── CredentialShared      shared_credentials.block refused this client          -32012
"""

from __future__ import annotations

from typing import Any, ClassVar

# JSON-RPC error codes (the standard ones, and the gateway's own in the server-error range).
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
LEGACY_RESOURCE_NOT_FOUND = -32002  # 2025-11-25; retired in 2026-07-28, which uses -32602
STOPPED = -32010  # a budget, rate or loop stop on a method other than tools/call
UNAVAILABLE = -32011  # store or audit sink unavailable: nothing was forwarded
CREDENTIAL_SHARED = -32012  # shared_credentials.block: a client beyond the agent's distinct-client limit
SESSION_ENDED = -32014  # the session ended while the request was in flight (HTTP 401 where no response had started)


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code: ClassVar[int | None] = None  # the JSON-RPC error inside an MCP request; None: not an agent's answer
    legacy_code: ClassVar[int | None] = None  # the code on a handshake-era (2025-11-25) session, where it differs

    def rpc_message(self) -> str:
        """The error's message as the agent is told it."""
        return str(self)

    def rpc_data(self) -> Any:
        """The error's `data` as the agent is told it."""
        return None


class ConfigError(GatewayError):
    """A configuration file, manifest or CLI argument is invalid.

    The message is one line naming the file, the field and the reason.
    """


class ConfigNotFound(ConfigError):
    """gateway.yaml is not where the command looked for it."""


class OperatorError(GatewayError):
    """An operator action cannot be done: unknown id, already ended, defined in agents.yaml."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # the admin API's HTTP status for it


class AuthError(GatewayError):
    """The request's credential is missing, invalid, or its session has ended."""

    code = SESSION_ENDED  # inside an MCP request: the session ended after the request was authenticated

    def __init__(self, reason: str, *, error: str = "invalid_token", disclose: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        # The reason may be told to the caller even where failures are otherwise answered alike: it proved
        # it holds the credential (an `invalid_client` for a secret past credential_max_age says to rotate it).
        self.disclose = disclose

    def rpc_message(self) -> str:
        return f"The session has ended ({self.reason}); nothing more is forwarded: get a new token"


class Unavailable(GatewayError):
    """Something the gateway must consult to decide safely cannot be consulted."""

    code = UNAVAILABLE

    def rpc_message(self) -> str:
        return f"Service unavailable, nothing was forwarded: {self}"


class StoreUnavailable(Unavailable):
    """The session store cannot be read or written."""


class AuditUnavailable(Unavailable):
    """The audit sink cannot durably record."""


class Stopped(GatewayError):
    """A budget, rate-limit or loop stop. The agent is told plainly to stop."""

    code = STOPPED

    def __init__(self, limit: str, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.limit = limit
        self.detail = detail

    def rpc_data(self) -> dict[str, Any]:
        """The `_meta` of a stop result, and the `data` of a stop error."""
        return {"gateway/stop": self.detail}


class UpstreamError(GatewayError):
    """The upstream tool server is down, crashed or failed the request.

    The message is for the log and the audit record's `error` (it may name paths and
    exceptions of this host); an agent is told only `for_agent(...)`.
    """

    code = INTERNAL_ERROR
    outcome = "error"
    server = ""  # the upstream's name, set by whoever caught it knowing which: what the agent is told

    def for_agent(self) -> str:
        return f"The tool server {self.server!r} is unavailable; the call was not completed."

    def rpc_message(self) -> str:
        return self.for_agent()  # the detail goes to the log and the audit only


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the call timeout."""

    outcome = "timeout"

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds

    def for_agent(self) -> str:
        return f"The tool server {self.server!r} did not answer within {self.seconds:g}s; the call was not completed."


class NotFound(GatewayError):
    """Not granted, or no such thing: the agent gets one answer for both."""

    code = INVALID_PARAMS


class UnknownTool(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown tool: {name}")


class UnknownPrompt(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown prompt: {name}")


class ResourceNotFound(NotFound):
    legacy_code = LEGACY_RESOURCE_NOT_FOUND

    def __init__(self, uri: str) -> None:
        super().__init__(f"Resource not found: {uri}")
        self.uri = uri

    def rpc_data(self) -> dict[str, Any]:
        return {"uri": self.uri}


class CredentialShared(GatewayError):
    """shared_credentials.block: this agent's credential is in use by more distinct clients than allowed."""

    code = CREDENTIAL_SHARED

    def __init__(self) -> None:
        super().__init__(
            "Refused: this agent's credential is in use by more clients than "
            "allowed (shared_credentials); use a credential of your own"
        )
