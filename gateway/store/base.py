"""The store seam: one Protocol, a SQLite default and a PostgreSQL backend.

The session record in the store is the source of truth (a token only points at
it). Everything that must agree across replicas lives here: agents and their
credentials, sessions and their budget counters, the client-assertion replay
cache, and audit checkpoints. Every method takes the time from its caller, so
decisions stay testable with an injected clock.

Backends raise `StoreUnavailable` when the database cannot be consulted; the
callers refuse the request (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

SessionState = Literal["active", "suspended", "closed", "expired", "revoked"]
LIVE_STATES: tuple[SessionState, ...] = ("active", "suspended")
ENDED_STATES: tuple[SessionState, ...] = ("closed", "expired", "revoked")


@dataclass(frozen=True)
class AgentRecord:
    id: str
    owner: str
    cost_center: str | None = None
    source: Literal["config", "store"] = "store"
    disabled: bool = False
    created_at: float = 0.0
    secret_hash: str | None = field(default=None, repr=False)
    jwks: dict[str, Any] | None = None
    grant: dict[str, Any] | None = None  # a GrantSpec as JSON, for store agents


@dataclass(frozen=True)
class SessionRecord:
    sid: str
    agent: str
    owner: str
    on_behalf_of: str | None
    task: str | None
    grant_version: str
    state: SessionState
    created_at: float
    expires_at: float  # when the current token's session ends unless renewed
    max_expires_at: float  # the hard end of the session; renewal cannot pass it
    idle_timeout: float
    last_seen: float
    calls: int = 0
    tokens: int = 0
    calls_limit: int | None = None
    tokens_limit: int | None = None
    reason: str | None = None  # why it ended or was suspended
    stop: dict[str, Any] | None = None  # the structured stop detail while suspended
    ended_at: float | None = None
    cost_center: str | None = None

    def ended_state(self, now: float) -> SessionState | None:
        """The state this session is really in at `now`, if it has ended."""
        if self.state in ENDED_STATES:
            return self.state
        if now >= self.expires_at or now >= self.last_seen + self.idle_timeout:
            return "expired"
        return None


@dataclass(frozen=True)
class Reservation:
    """The outcome of the per-call session check and budget reservation."""

    session: SessionRecord | None  # None: no such session
    granted: bool  # False: nothing reserved; see `refusal`
    refusal: str | None = None  # "ended" | "suspended" | "session_calls" | "session_tokens" | ...


class Store(Protocol):
    """Everything the gateway keeps across requests, processes and replicas."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    # agents
    async def sync_config_agents(self, agents: dict[str, AgentRecord], now: float) -> None:
        """Make the config-sourced agents in the store equal `agents` (agents.yaml is authoritative).

        Credentials and the operator's disabled flag are kept: they are not part of the definition.
        """

    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    async def list_agents(self) -> list[AgentRecord]: ...

    async def create_agent(self, agent: AgentRecord) -> bool:
        """Insert a new agent; False if the id exists."""

    async def update_agent(self, agent_id: str, **changes: Any) -> bool:
        """Change fields of an agent; False if it does not exist."""

    # sessions
    async def create_session(self, session: SessionRecord, max_active: int | None) -> bool:
        """Insert a session unless the agent already has `max_active` live ones (atomic)."""

    async def get_session(self, sid: str) -> SessionRecord | None: ...

    async def list_sessions(
        self, agent: str | None = None, state: SessionState | None = None, now: float | None = None
    ) -> list[SessionRecord]: ...

    async def end_session(self, sid: str, state: SessionState, reason: str, now: float) -> SessionRecord | None:
        """End a live session; returns it as ended, or None if it was not live."""

    async def end_agent_sessions(self, agent: str, state: SessionState, reason: str, now: float) -> list[str]:
        """End every live session of an agent; returns their ids."""

    async def expire_sessions(self, now: float) -> list[SessionRecord]:
        """Mark live sessions past their expiry or idle timeout as expired; return them."""

    async def renew_session(self, sid: str, expires_at: float, now: float) -> SessionRecord | None:
        """Extend a live session's expiry (capped by its max) and mark it seen."""

    async def touch_session(self, sid: str, now: float) -> None:
        """Record activity, for the idle timeout."""

    async def reserve(self, sid: str, now: float, calls: int, tokens: int) -> Reservation:
        """The per-call check: the session is live, active, within its limits; reserve in one statement."""

    async def settle(self, sid: str, tokens: int) -> None:
        """Add the tokens a call actually carried (after the reply)."""

    async def suspend_session(self, sid: str, stop: dict[str, Any], now: float) -> bool: ...

    async def resume_session(self, sid: str, add_calls: int, add_tokens: int, now: float) -> SessionRecord | None: ...

    # replay cache for client assertions (private_key_jwt)
    async def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        """Record a single-use id; False if it was already seen."""

    # audit checkpoints, kept outside the audit file
    async def put_checkpoint(self, instance: str, seq: int, head: str, signature: str, now: float) -> None: ...

    async def get_checkpoint(self, instance: str) -> dict[str, Any] | None: ...
