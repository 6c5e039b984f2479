"""The SQLite schema, as numbered migrations (version N is MIGRATIONS[N - 1], recorded in `user_version`).

Append a migration to change the schema; never edit one that has shipped. JSON is kept as text
and times as epoch seconds, as in the PostgreSQL schema, so both backends share one row conversion.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        cost_center TEXT,
        source TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        secret_hash TEXT,
        jwks TEXT,
        grant_spec TEXT
    );
    CREATE TABLE sessions (
        sid TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        owner TEXT NOT NULL,
        on_behalf_of TEXT,
        task TEXT,
        grant_version TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        max_expires_at REAL NOT NULL,
        idle_timeout REAL NOT NULL,
        last_seen REAL NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        calls_limit INTEGER,
        tokens_limit INTEGER,
        reason TEXT,
        stop TEXT,
        ended_at REAL,
        cost_center TEXT
    );
    CREATE INDEX sessions_agent_state ON sessions (agent, state);
    CREATE TABLE seen_jti (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    CREATE TABLE checkpoints (
        instance TEXT PRIMARY KEY, seq INTEGER NOT NULL, head TEXT NOT NULL,
        signature TEXT NOT NULL, updated_at REAL NOT NULL
    );
    """,
    # Budgets: the session row counts calls and tokens; a trigger rolls each change up into the
    # agent's UTC day and clock minute, and into a capped tool's per-session count, so a
    # reservation stays one statement (the UPDATE and its trigger commit or fail together).
    # A rollup happens only when the statement names its day, minute or tool (the grant has
    # that limit), so an agent without those limits pays for none of them.
    """
    ALTER TABLE sessions ADD COLUMN usage_day TEXT;
    ALTER TABLE sessions ADD COLUMN usage_minute INTEGER;
    ALTER TABLE sessions ADD COLUMN usage_tool TEXT;
    CREATE TABLE agent_days (
        agent TEXT NOT NULL, day TEXT NOT NULL, calls INTEGER NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (agent, day)
    ) WITHOUT ROWID;
    CREATE TABLE agent_minutes (
        agent TEXT NOT NULL, minute INTEGER NOT NULL, calls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (agent, minute)
    ) WITHOUT ROWID;
    CREATE TABLE session_tools (
        sid TEXT NOT NULL, tool TEXT NOT NULL, calls INTEGER NOT NULL DEFAULT 0, blocked TEXT,
        PRIMARY KEY (sid, tool)
    ) WITHOUT ROWID;
    CREATE TABLE budget_alerts (
        scope TEXT NOT NULL, limit_name TEXT NOT NULL, share REAL NOT NULL, PRIMARY KEY (scope, limit_name, share)
    ) WITHOUT ROWID;
    CREATE TRIGGER sessions_usage AFTER UPDATE OF calls, tokens ON sessions
    WHEN (new.calls <> old.calls OR new.tokens <> old.tokens)
      AND (new.usage_day IS NOT NULL OR new.usage_minute IS NOT NULL OR new.usage_tool IS NOT NULL)
    BEGIN
        INSERT INTO agent_days (agent, day, calls, tokens)
            SELECT new.agent, new.usage_day, new.calls - old.calls, new.tokens - old.tokens
            WHERE new.usage_day IS NOT NULL
            ON CONFLICT (agent, day) DO UPDATE SET calls = calls + excluded.calls, tokens = tokens + excluded.tokens;
        INSERT INTO agent_minutes (agent, minute, calls)
            SELECT new.agent, new.usage_minute, new.calls - old.calls
            WHERE new.calls > old.calls AND new.usage_minute IS NOT NULL
            ON CONFLICT (agent, minute) DO UPDATE SET calls = calls + excluded.calls;
        INSERT INTO session_tools (sid, tool, calls)
            SELECT new.sid, new.usage_tool, new.calls - old.calls
            WHERE new.calls > old.calls AND new.usage_tool IS NOT NULL
            ON CONFLICT (sid, tool) DO UPDATE SET calls = calls + excluded.calls;
    END;
    """,
    # Settlements and releases applied, by key (a call id): each is applied once, however often
    # it is retried, because the key and the counter change commit in one transaction.
    """
    CREATE TABLE settlements (
        key TEXT PRIMARY KEY, sid TEXT NOT NULL, tokens INTEGER NOT NULL, applied_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX settlements_applied_at ON settlements (applied_at);
    """,
    # Workload identity federation: the platform identity ({issuer, subject}) a store agent authenticates with.
    """
    ALTER TABLE agents ADD COLUMN workload TEXT;
    CREATE UNIQUE INDEX agents_workload ON agents (workload) WHERE workload IS NOT NULL;
    """,
    # Agent lifecycle: when a secret or key set was last set (credential_max_age counts from it; a credential
    # older than this migration counts from its agent's creation, never younger than it is), the last token,
    # and a store agent's own lifecycle settings (agents.yaml's agents keep theirs there).
    """
    ALTER TABLE agents ADD COLUMN secret_at REAL;
    ALTER TABLE agents ADD COLUMN keys_at REAL;
    ALTER TABLE agents ADD COLUMN last_used REAL;
    ALTER TABLE agents ADD COLUMN lifecycle TEXT;
    UPDATE agents SET secret_at = created_at WHERE secret_hash IS NOT NULL;
    UPDATE agents SET keys_at = created_at WHERE jwks IS NOT NULL;
    CREATE INDEX sessions_agent_last_seen ON sessions (agent, last_seen);
    """,
    # Sign-in (gateway/login/): authorization codes, refresh tokens, remembered consent and registered
    # clients, keyed by kind and a SHA-256 (never the secret itself); `used_at` makes codes and refresh
    # tokens single-use across processes.
    """
    CREATE TABLE login_items (
        kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;
    CREATE INDEX login_items_expires_at ON login_items (expires_at);
    """,
)


def statements(script: str) -> Iterator[str]:
    """Split a migration into statements; a trigger's body keeps its inner semicolons."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending
