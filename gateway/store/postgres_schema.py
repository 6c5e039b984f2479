"""The PostgreSQL schema, as numbered migrations (version N is MIGRATIONS[N - 1]).

Append a migration to change the schema; never edit one that has shipped. Each
runs in the transaction that records it in `schema_migrations`. JSON is kept as
text (the store never queries inside it) and times as epoch seconds, as in the
SQLite schema, so both backends share one row conversion.
"""

from __future__ import annotations

SESSION_ENDED_CHANNEL = "gateway_session_ended"  # payload: the sid
KEYS_CHANNEL = "gateway_keys"

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        cost_center TEXT,
        source TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT false,
        created_at DOUBLE PRECISION NOT NULL,
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
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        max_expires_at DOUBLE PRECISION NOT NULL,
        idle_timeout DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        calls BIGINT NOT NULL DEFAULT 0,
        tokens BIGINT NOT NULL DEFAULT 0,
        calls_limit BIGINT,
        tokens_limit BIGINT,
        reason TEXT,
        stop TEXT,
        ended_at DOUBLE PRECISION,
        cost_center TEXT
    );
    CREATE INDEX sessions_agent_state ON sessions (agent, state);
    CREATE INDEX sessions_live ON sessions (expires_at) WHERE state IN ('active', 'suspended');
    CREATE TABLE seen_jti (jti TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX seen_jti_expires ON seen_jti (expires_at);
    CREATE TABLE checkpoints (
        instance TEXT PRIMARY KEY, seq BIGINT NOT NULL, head TEXT NOT NULL,
        signature TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL
    );

    -- Key material every replica shares: HMAC and sealing secrets, and the signing key set.
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY, pem BYTEA NOT NULL,
        retired_at DOUBLE PRECISION, verify_until DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;

    -- Whoever ends a session (a replica, the CLI), every listening replica hears it at commit.
    CREATE FUNCTION notify_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{SESSION_ENDED_CHANNEL}', NEW.sid);
        RETURN NULL;
    END $$;
    CREATE TRIGGER sessions_ended AFTER UPDATE OF state ON sessions FOR EACH ROW
        WHEN (OLD.state IN ('active', 'suspended') AND NEW.state IN ('closed', 'expired', 'revoked'))
        EXECUTE FUNCTION notify_session_ended();
    """,
)
