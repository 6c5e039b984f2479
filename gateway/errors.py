"""The gateway's one exception tree.

Every layer raises one of these; the HTTP edge and the MCP front translate them
into the answers DESIGN.md's Errors table fixes, in one place each.

    GatewayError
    ├── ConfigError           a bad file, field or CLI argument (startup, CLI)
    │   └── ConfigNotFound    gateway.yaml is not where the command looked
    ├── OperatorError         an operator action cannot be done (CLI exit 1, admin API 4xx)
    ├── AuthError             HTTP 401 invalid_token (bad token, ended session)
    ├── Unavailable           HTTP 503: identity, session store or audit sink down
    │   ├── StoreUnavailable
    │   └── AuditUnavailable
    ├── Stopped               budget, rate or loop stop: tool result isError
    └── UpstreamError         upstream down, crashed or failed
        └── UpstreamTimeout
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


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

    def __init__(self, reason: str, *, error: str = "invalid_token", disclose: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        # The reason may be told to the caller even where failures are otherwise answered alike: it proved
        # it holds the credential (an `invalid_client` for a secret past credential_max_age says to rotate it).
        self.disclose = disclose


class Unavailable(GatewayError):
    """Something the gateway must consult to decide safely cannot be consulted."""


class StoreUnavailable(Unavailable):
    """The session store cannot be read or written."""


class AuditUnavailable(Unavailable):
    """The audit sink cannot durably record."""


class Stopped(GatewayError):
    """A budget, rate-limit or loop stop. The agent is told plainly to stop."""

    def __init__(self, limit: str, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.limit = limit
        self.detail = detail


class UpstreamError(GatewayError):
    """The upstream tool server is down, crashed or failed the request.

    The message is for the log and the audit record's `error` (it may name paths and
    exceptions of this host); an agent is told only `for_agent(...)`.
    """

    outcome = "error"

    def for_agent(self, server: str) -> str:
        return f"The tool server {server!r} is unavailable; the call was not completed."


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the call timeout."""

    outcome = "timeout"

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds

    def for_agent(self, server: str) -> str:
        return f"The tool server {server!r} did not answer within {self.seconds:g}s; the call was not completed."
