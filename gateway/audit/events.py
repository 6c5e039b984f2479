"""Every audit event name, in one place: the `event` field of a record (docs/design.md lists them).

`Audit.emit` (sink.py) takes an `Event`, so a new event is added here first; readers (reports, the OCSF
export, the console, `audit tail`) compare records' plain strings with these members.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # The gateway and its audit stream
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    AUDIT_RECOVERED = "audit.recovered"
    AUDIT_VERIFIED = "audit.verified"
    CONFIG_RELOADED = "config.reloaded"
    CONFIG_REJECTED = "config.rejected"
    KEY_ROTATED = "key.rotated"
    UPSTREAM_UNSANDBOXED = "upstream.unsandboxed"
    # Identity: authentication, tokens, sessions
    AUTH_FAILED = "auth.failed"
    DENIALS_AGGREGATED = "denials.aggregated"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REFRESHED = "token.refreshed"
    LOGIN_STARTED = "login.started"
    LOGIN_COMPLETED = "login.completed"
    LOGIN_FAILED = "login.failed"
    CONSENT_GRANTED = "consent.granted"
    REFRESH_REUSED = "refresh.reused"
    CLIENT_REGISTERED = "client.registered"
    CLIENT_METADATA_FETCHED = "client.metadata_fetched"
    CLIENT_METADATA_FAILED = "client.metadata_failed"
    SESSION_OPENED = "session.opened"
    SESSION_CLOSED = "session.closed"
    SESSION_RESUMED = "session.resumed"
    CREDENTIAL_SHARED_SUSPECTED = "credential.shared_suspected"
    # Agents (operator actions and the lifecycle sweep)
    AGENT_CREATED = "agent.created"
    AGENT_ENABLED = "agent.enabled"
    AGENT_DISABLED = "agent.disabled"
    AGENT_SECRET_ROTATED = "agent.secret_rotated"
    AGENT_GRANT_CHANGED = "agent.grant_changed"
    AGENT_EXPIRED = "agent.expired"
    AGENT_IDLE_DISABLED = "agent.idle_disabled"
    AGENT_CREDENTIAL_STALE = "agent.credential_stale"
    # MCP traffic: each admission record, then its outcome record (same call_id)
    TOOLS_LISTED = "tools.listed"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    RESOURCE_READ = "resource.read"
    RESOURCE_RESULT = "resource.result"
    PROMPT_GET = "prompt.get"
    PROMPT_RESULT = "prompt.result"
    COMPLETION_COMPLETE = "completion.complete"
    COMPLETION_RESULT = "completion.result"
    SAMPLING_REQUEST = "sampling.request"
    ELICITATION_REQUEST = "elicitation.request"
    ROOTS_REQUEST = "roots.request"
    INPUT_REQUEST = "input.request"
    LOGGING_SET_LEVEL = "logging.set_level"
    # Spend
    MODEL_USAGE = "model.usage"
    BUDGET_THRESHOLD = "budget.threshold"
    BUDGET_EXCEEDED = "budget.exceeded"
    # Tool definitions
    TOOL_CHANGED = "tool.changed"
    TOOL_PINNED = "tool.pinned"
    # The operator console
    CONSOLE_SIGNED_IN = "console.signed_in"
    CONSOLE_SIGNED_OUT = "console.signed_out"
