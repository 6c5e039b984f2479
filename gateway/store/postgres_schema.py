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
        retired_at DOUBLE PRECISION, verify_until DOUBLE PRECISION,
        generation BIGINT GENERATED ALWAYS AS IDENTITY  -- orders key sets: a newer active key has a higher one
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
    # Budgets: the agent's tokens per UTC day and calls per clock minute, each session's calls per
    # capped tool and its blocked tools, and which threshold alerts have fired. A reservation or a
    # settlement is one call of a function; when it touches a counter shared beyond the session row
    # it first takes the agent's advisory lock, so its checks see every reservation committed
    # before it on any replica (under READ COMMITTED each statement in the function takes a fresh
    # snapshot). The lock is always taken before any row lock, so the two cannot deadlock.
    """
    CREATE TABLE agent_days (
        agent TEXT NOT NULL, day TEXT NOT NULL, calls BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (agent, day)
    );
    CREATE TABLE agent_minutes (
        agent TEXT NOT NULL, minute BIGINT NOT NULL, calls BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (agent, minute)
    );
    CREATE TABLE session_tools (
        sid TEXT NOT NULL, tool TEXT NOT NULL, calls BIGINT NOT NULL DEFAULT 0, blocked TEXT,
        PRIMARY KEY (sid, tool)
    );
    CREATE TABLE budget_alerts (
        scope TEXT NOT NULL, limit_name TEXT NOT NULL, share DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, limit_name, share)
    );

    CREATE FUNCTION gateway_lock_agent_budget(p_sid TEXT) RETURNS void LANGUAGE sql AS $$
        SELECT pg_advisory_xact_lock(hashtextextended('budget:' || agent, 0)) FROM sessions WHERE sid = p_sid
    $$;

    CREATE FUNCTION gateway_reserve(
        p_sid TEXT, p_now DOUBLE PRECISION, p_calls BIGINT, p_tokens BIGINT, p_day TEXT, p_minute BIGINT,
        p_tool TEXT, p_cap BIGINT, p_daily BIGINT, p_per_minute BIGINT
    ) RETURNS SETOF sessions LANGUAGE plpgsql AS $$
    DECLARE
        reserved sessions;
    BEGIN
        IF p_daily IS NOT NULL OR p_per_minute IS NOT NULL OR p_cap IS NOT NULL THEN
            PERFORM gateway_lock_agent_budget(p_sid);
        END IF;
        UPDATE sessions SET calls = calls + p_calls, tokens = tokens + p_tokens, last_seen = GREATEST(last_seen, p_now)
        WHERE sid = p_sid AND state = 'active' AND expires_at > p_now AND last_seen + idle_timeout > p_now
          AND (calls_limit IS NULL OR calls + p_calls <= calls_limit)
          AND (tokens_limit IS NULL OR tokens + p_tokens < tokens_limit)
          AND (p_daily IS NULL OR coalesce(
                (SELECT d.tokens FROM agent_days d WHERE d.agent = sessions.agent AND d.day = p_day), 0)
                + p_tokens < p_daily)
          AND (p_per_minute IS NULL OR coalesce(
                (SELECT m.calls FROM agent_minutes m WHERE m.agent = sessions.agent AND m.minute = p_minute), 0)
                + p_calls <= p_per_minute)
          AND NOT EXISTS (SELECT 1 FROM session_tools t WHERE t.sid = p_sid AND t.tool = p_tool
                AND (t.blocked IS NOT NULL OR (p_cap IS NOT NULL AND t.calls + p_calls > p_cap)))
        RETURNING * INTO reserved;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_daily IS NOT NULL THEN
            INSERT INTO agent_days AS d (agent, day, calls, tokens) VALUES (reserved.agent, p_day, p_calls, p_tokens)
            ON CONFLICT (agent, day)
            DO UPDATE SET calls = d.calls + excluded.calls, tokens = d.tokens + excluded.tokens;
        END IF;
        IF p_per_minute IS NOT NULL AND p_calls > 0 THEN
            INSERT INTO agent_minutes AS m (agent, minute, calls) VALUES (reserved.agent, p_minute, p_calls)
            ON CONFLICT (agent, minute) DO UPDATE SET calls = m.calls + excluded.calls;
        END IF;
        IF p_cap IS NOT NULL AND p_calls > 0 THEN
            INSERT INTO session_tools AS t (sid, tool, calls) VALUES (p_sid, p_tool, p_calls)
            ON CONFLICT (sid, tool) DO UPDATE SET calls = t.calls + excluded.calls;
        END IF;
        RETURN NEXT reserved;
    END $$;

    CREATE FUNCTION gateway_settle(p_sid TEXT, p_tokens BIGINT, p_day TEXT)
    RETURNS TABLE (session_tokens BIGINT, session_tokens_limit BIGINT, day_tokens BIGINT) LANGUAGE plpgsql AS $$
    DECLARE
        s_agent TEXT;
    BEGIN
        IF p_day IS NOT NULL THEN
            PERFORM gateway_lock_agent_budget(p_sid);
        END IF;
        UPDATE sessions SET tokens = tokens + p_tokens WHERE sid = p_sid
        RETURNING agent, tokens, tokens_limit INTO s_agent, session_tokens, session_tokens_limit;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_day IS NOT NULL THEN
            INSERT INTO agent_days AS d (agent, day, tokens) VALUES (s_agent, p_day, p_tokens)
            ON CONFLICT (agent, day) DO UPDATE SET tokens = d.tokens + excluded.tokens
            RETURNING d.tokens INTO day_tokens;
        END IF;
        RETURN NEXT;
    END $$;
    """,
    # Settlements and releases applied, by key (a call id): a settlement retried after a cut
    # connection (the database committed, the replica never heard) changes nothing, because the
    # key and the counter change commit in one transaction. A release returns a reservation whose
    # call was refused after it was counted (the agent's minute keeps the call: the rate limit
    # counts attempts). Calls denied before any reservation count against the rate limit too.
    """
    CREATE TABLE settlements (
        key TEXT PRIMARY KEY, sid TEXT NOT NULL, tokens BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX settlements_applied_at ON settlements (applied_at);

    CREATE FUNCTION gateway_first_use(p_key TEXT, p_sid TEXT, p_tokens BIGINT, p_now DOUBLE PRECISION)
    RETURNS boolean LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO settlements (key, sid, tokens, applied_at) VALUES (p_key, p_sid, p_tokens, p_now)
        ON CONFLICT (key) DO NOTHING;
        RETURN FOUND;
    END $$;

    CREATE FUNCTION gateway_settle_once(
        p_key TEXT, p_sid TEXT, p_tokens BIGINT, p_day TEXT, p_now DOUBLE PRECISION
    ) RETURNS TABLE (session_tokens BIGINT, session_tokens_limit BIGINT, day_tokens BIGINT) LANGUAGE plpgsql AS $$
    BEGIN
        IF p_day IS NOT NULL THEN  -- the agent's lock before any row lock, as everywhere
            PERFORM gateway_lock_agent_budget(p_sid);
        END IF;
        IF NOT gateway_first_use(p_key, p_sid, p_tokens, p_now) THEN
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM gateway_settle(p_sid, p_tokens, p_day);
    END $$;

    CREATE FUNCTION gateway_release(
        p_key TEXT, p_sid TEXT, p_now DOUBLE PRECISION, p_calls BIGINT, p_tokens BIGINT, p_day TEXT, p_tool TEXT
    ) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        s_agent TEXT;
    BEGIN
        IF p_day IS NOT NULL OR p_tool IS NOT NULL THEN
            PERFORM gateway_lock_agent_budget(p_sid);
        END IF;
        IF NOT gateway_first_use(p_key, p_sid, -p_tokens, p_now) THEN
            RETURN;
        END IF;
        UPDATE sessions SET calls = GREATEST(calls - p_calls, 0), tokens = GREATEST(tokens - p_tokens, 0)
        WHERE sid = p_sid RETURNING agent INTO s_agent;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_day IS NOT NULL THEN
            UPDATE agent_days SET calls = GREATEST(calls - p_calls, 0), tokens = GREATEST(tokens - p_tokens, 0)
            WHERE agent = s_agent AND day = p_day;
        END IF;
        IF p_tool IS NOT NULL THEN
            UPDATE session_tools SET calls = GREATEST(calls - p_calls, 0) WHERE sid = p_sid AND tool = p_tool;
        END IF;
    END $$;

    CREATE FUNCTION gateway_count_attempt(p_agent TEXT, p_minute BIGINT, p_limit BIGINT)
    RETURNS BIGINT LANGUAGE plpgsql AS $$
    DECLARE
        counted BIGINT;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended('budget:' || p_agent, 0));
        INSERT INTO agent_minutes AS m (agent, minute, calls) VALUES (p_agent, p_minute, 1)
        ON CONFLICT (agent, minute) DO UPDATE SET calls = m.calls + 1 WHERE m.calls < p_limit
        RETURNING m.calls INTO counted;
        IF FOUND THEN
            RETURN NULL;
        END IF;
        RETURN (SELECT calls FROM agent_minutes WHERE agent = p_agent AND minute = p_minute);
    END $$;
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
    ALTER TABLE agents ADD COLUMN secret_at DOUBLE PRECISION;
    ALTER TABLE agents ADD COLUMN keys_at DOUBLE PRECISION;
    ALTER TABLE agents ADD COLUMN last_used DOUBLE PRECISION;
    ALTER TABLE agents ADD COLUMN lifecycle TEXT;
    UPDATE agents SET secret_at = created_at WHERE secret_hash IS NOT NULL;
    UPDATE agents SET keys_at = created_at WHERE jwks IS NOT NULL;
    CREATE INDEX sessions_agent_last_seen ON sessions (agent, last_seen);
    """,
    # Sign-in (gateway/login/): authorization codes, refresh tokens, remembered consent and registered
    # clients, keyed by kind and a SHA-256 (never the secret itself); `used_at` makes codes and refresh
    # tokens single-use across replicas.
    """
    CREATE TABLE login_items (
        kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION, PRIMARY KEY (kind, key)
    );
    CREATE INDEX login_items_expires_at ON login_items (expires_at);
    """,
)
