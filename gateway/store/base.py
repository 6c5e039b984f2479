"""The store seam: the records, one Protocol per role, and `Store`, which is all of them.

The session record in the store is the source of truth (a token only points at
it). Everything that must agree across replicas lives here: agents and their
credentials, sessions and their budget counters, single-use ids, sign-in items
and audit checkpoints. Each of those is a role Protocol (`AgentStore`,
`SessionStore`, `BudgetStore`, `ReplayStore`, `LoginStore`, `CheckpointStore`,
and `StoreConnection` for the backend itself), so a component names the part of
the store it uses; `KeyStore` is the key material only a shared database keeps.
Every method takes the time from its caller, so decisions stay testable with an
injected clock.

Backends raise `StoreUnavailable` when the database cannot be consulted; the
callers refuse the request (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

SessionState = Literal["active", "suspended", "closed", "expired", "revoked"]
ENDED_STATES: tuple[SessionState, ...] = ("closed", "expired", "revoked")


@dataclass(frozen=True)
class AgentRecord:
    id: str
    owner: str
    cost_center: str | None = None
    source: Literal["config", "store", "interactive"] = "store"  # interactive: created by a sign-in
    disabled: bool = False
    created_at: float = 0.0
    secret_hash: str | None = field(default=None, repr=False)
    jwks: dict[str, Any] | None = None
    grant: dict[str, Any] | None = None  # a GrantSpec as JSON, for store agents
    workload: dict[str, str] | None = None  # {issuer, subject}: authenticates with its platform's JWT
    secret_at: float | None = None  # when its secret was set (created or rotated): credential_max_age counts from it
    keys_at: float | None = None  # when its registered key set (jwks) was set or last changed
    last_used: float | None = None  # its last token issued (calls count through its sessions' last_seen)
    lifecycle: dict[str, float | None] | None = None  # a store agent's own expires / disable_after_idle / ...


@dataclass(frozen=True)
class LoginItem:
    """A sign-in record (code, refresh token, consent, registered client) and when it was first used."""

    data: dict[str, Any]
    used_at: float | None  # None: never used (for `use_login_item`: this very call is its first use)


@dataclass(slots=True)  # built on every request: a frozen dataclass pays a setattr per field
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


@dataclass(slots=True)
class Ask:
    """One reservation: what to count now, and the limits in force (read from the current grant)."""

    sid: str
    agent: str
    now: float
    calls: int = 0
    tokens: int = 0
    tool: str | None = None  # `server.tool` of a tool call
    tool_cap: int | None = None  # the grant's tool_calls cap for `tool`
    daily_tokens: int | None = None
    calls_per_minute: int | None = None

    @property
    def day(self) -> str:
        return utc_day(self.now)

    @property
    def minute(self) -> int:
        return clock_minute(self.now)

    # What the ask counts besides the session: only the counters whose limit it carries, so an agent
    # without a daily limit, a rate limit or a tool cap keeps no counter for it.

    @property
    def counted_day(self) -> str | None:
        return self.day if self.daily_tokens is not None else None

    @property
    def counted_minute(self) -> int | None:
        return self.minute if self.calls_per_minute is not None else None

    @property
    def counted_tool(self) -> str | None:
        return self.tool if self.tool_cap is not None else None


def utc_day(now: float) -> str:
    """The UTC calendar day of `now`: daily budgets reset at 00:00 UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def clock_minute(now: float) -> int:
    """The clock minute of `now` (minutes since the epoch): per-minute rates count in these."""
    return int(now // 60)


KEEP_DAYS = 35  # how many days of the agents' daily counters `prune_usage` keeps
KEEP_SETTLEMENTS = 86400.0  # seconds `prune_usage` keeps the keys of applied settlements (a retry comes sooner)


class Settled(NamedTuple):
    """Totals after a settlement, for threshold alerts."""

    tokens: int  # the session's
    tokens_limit: int | None
    day_tokens: int | None  # the agent's on this UTC day, when counted


@dataclass(slots=True)
class Reservation:
    """The outcome of the per-call session check and budget reservation."""

    session: SessionRecord | None  # None: no such session
    granted: bool  # False: nothing reserved; see `refusal`
    refusal: str | None = None  # "ended" | "suspended" | "blocked" | the name of the limit reached
    used: int | None = None  # for a limit refusal: how much of it is used
    limit: int | None = None
    block: dict[str, Any] | None = None  # for "blocked": the stop detail recorded with the block


@dataclass(frozen=True)
class StoredKey:
    """A signing key kept in a shared store. The active one has no `retired_at`."""

    kid: str
    pem: bytes = field(repr=False)  # PKCS#8 private key
    retired_at: float | None = None
    verify_until: float | None = None
    generation: int = 0  # assigned by the store; the newer the key, the higher


# What `Store.watch` reports: kinds of change another process made.
SESSION_ENDED = "session_ended"  # key: the sid
KEYS_CHANGED = "keys_changed"  # key: ""
RESYNC = "resync"  # the watch (re)connected: what changed while it was away was not reported; re-check

ChangeListener = Callable[[str, str], Awaitable[None]]


class StoreConnection(Protocol):
    """The backend itself: connecting, answering a readiness check, and changes made elsewhere."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    async def watch(self, on_change: ChangeListener) -> None:
        """Report changes other processes make, as `on_change(kind, key)`, until cancelled.

        A backend that cannot push changes returns at once; the gateway's periodic check covers it.
        """


class AgentStore(Protocol):
    """Agents and their credentials: agents.yaml's (synced in), the CLI's and admin API's, and sign-ins'."""

    async def sync_config_agents(self, agents: dict[str, AgentRecord], now: float) -> None:
        """Make the config-sourced agents in the store equal `agents` (agents.yaml is authoritative).

        Credentials and the operator's disabled flag are kept: they are not part of the definition.
        """

    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    async def list_agents(self) -> list[AgentRecord]: ...

    async def agent_for_workload(self, issuer: str, subject: str) -> AgentRecord | None:
        """The agent whose `workload` is this issuer and subject (at most one: the column is unique)."""

    async def create_agent(self, agent: AgentRecord) -> bool:
        """Insert a new agent; False if the id exists."""

    async def last_seen_by_agent(self) -> dict[str, float]:
        """Each agent's latest session activity (`last_seen`: its last call or renewal), for idle agents."""

    async def update_agent(self, agent_id: str, **changes: Any) -> bool:
        """Change fields of an agent; False if it does not exist. ValueError for a field that cannot change."""


class SessionStore(Protocol):
    """Session rows, the source of truth a token points at: opened, renewed, seen, listed and ended."""

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


class BudgetStore(Protocol):
    """The counters budgets reserve against and settle into, and the stops they record.

    The limits are checked here, inside one atomic statement; why a reservation was refused is
    decided by gateway/spend/limits.py, which both SQL backends call.
    """

    async def reserve(self, ask: Ask) -> Reservation:
        """The per-call check, in one atomic statement where the backend allows.

        Grants when the session is live and active, its tool is not blocked, and every limit
        holds after counting `ask`: session calls and tokens (tokens must stay below the limit),
        the agent's tokens that UTC day, its calls that minute, and the session's calls to a
        capped tool. Counts the calls and tokens in the session, and in the agent's day, the
        agent's minute and the tool only when the ask carries that limit (`Ask.counted_*`).
        Refusals are explained by `spend.limits.refusal`.
        """

    async def regrant(self, sid: str, grant_version: str, calls_limit: int | None, tokens_limit: int | None) -> None:
        """Apply a changed grant to a live session: its version and the limits from it."""

    async def release(self, ask: Ask, key: str) -> None:
        """Return a granted reservation whose call was then refused, once per `key` (atomic).

        Takes back what `reserve(ask)` counted in the session, the agent's UTC day and the tool's
        cap; the agent's minute keeps the call (the rate limit counts attempts, refused ones too).
        """

    async def settle(self, sid: str, tokens: int, now: float, daily: bool, key: str) -> Settled | None:
        """Add tokens a call carried (after the reply) to the session, and with `daily` to its agent's UTC day.

        Applied once per `key` (a call id): a retry after a failure that left the outcome unknown
        (a cut connection after the commit) changes nothing. The key and the addition commit
        together. Returns the totals after the addition; None without a session or when `key`
        was applied before.
        """

    async def count_attempt(self, agent: str, now: float, limit: int) -> int | None:
        """Count a call that was denied before any reservation against the agent's calls in `now`'s minute.

        Counted only while it stays within `limit` (atomic, like the reservation's rate check):
        None then; otherwise the calls already counted this minute.
        """

    async def block_tool(self, sid: str, tool: str, stop: dict[str, Any]) -> bool:
        """Refuse `tool` for the rest of this session; False if it was already blocked."""

    async def first_alert(self, scope: str, limit: str, share: float) -> bool:
        """Record that a threshold alert fired for `scope`; False if it had fired before."""

    async def prune_usage(self, now: float) -> None:
        """Drop agent counters no reservation can consult any more (past minutes, old days)."""

    async def suspend_session(self, sid: str, stop: dict[str, Any]) -> bool: ...

    async def resume_session(self, sid: str, add_calls: int, add_tokens: int, now: float) -> SessionRecord | None:
        """Lift a stop: the session is active again, its limits raised, its blocked tools unblocked."""


class ReplayStore(Protocol):
    """Single-use ids (client assertions' and DPoP proofs' `jti`), shared so a replay fails on every replica."""

    async def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        """Record a single-use id; False if it was already seen."""


class LoginStore(Protocol):
    """Sign-in (gateway/login/): codes, refresh tokens, consent and registered clients, by kind and hashed key."""

    async def put_login_item(self, kind: str, key: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        """Store an item unless one exists under (kind, key); prunes expired items. False if it existed."""

    async def get_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        """The unexpired item, or None."""

    async def use_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        """Mark the unexpired item used (atomic) and return it as it was before: `used_at` None means this
        call was its first use. None when there is no such unexpired item."""


class CheckpointStore(Protocol):
    """Signed audit checkpoints, kept outside the audit file so a cut tail is caught."""

    async def put_checkpoint(self, instance: str, seq: int, head: str, signature: str, now: float) -> None: ...

    async def get_checkpoint(self, instance: str) -> dict[str, Any] | None: ...


class Store(StoreConnection, AgentStore, SessionStore, BudgetStore, ReplayStore, LoginStore, CheckpointStore, Protocol):
    """Everything the gateway keeps across requests, processes and replicas: every role in one backend.

    A component that uses one role takes that role's Protocol; only the wiring holds the whole store.
    """


class KeyStore(Protocol):
    """Key material a store shares between replicas, so none of them needs a shared disk."""

    async def secrets(self, candidates: dict[str, bytes]) -> dict[str, bytes]:
        """The stored value of each named secret; a candidate is stored where there is none yet."""

    async def signing_keys(self, candidate: StoredKey | None) -> list[StoredKey]:
        """Every stored signing key; a `candidate` becomes the active key if there is none yet."""

    async def rotate_signing_key(self, new: StoredKey, now: float, overlap: float) -> None:
        """Retire the active key (it verifies for `overlap` more seconds), make `new` active, and
        forget retired keys whose overlap has passed."""
