"""The embedded SQLite store (the default).

Statements are short and run on the event loop thread: a WAL-mode local file
answers in microseconds, which is cheaper than a thread hop per call. The CLI
and the gateway share the file; SQLite's locking serialises writers and
`busy_timeout` bounds the wait. Any sqlite3 error becomes `StoreUnavailable`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.store.base import AgentRecord, Reservation, SessionRecord, SessionState

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
)

_SESSION_COLUMNS = [f.name for f in fields(SessionRecord)]
_LIVE = "state IN ('active', 'suspended')"


class SQLiteStore:
    """`Store` over one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
            self._migrate()
        self.path.chmod(0o600)

    def _migrate(self) -> None:
        db = self._conn()
        with self._tx():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        with self._errors():
            self._conn().execute("SELECT 1").fetchone()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        return self._db

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"session store error: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        with self._errors():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._errors():
            row: sqlite3.Row | None = self._conn().execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._errors():
            return self._conn().execute(sql, args).fetchall()

    def _run(self, sql: str, *args: Any) -> int:
        with self._errors():
            return self._conn().execute(sql, args).rowcount

    # ------------------------------------------------------------ agents

    async def sync_config_agents(self, agents: dict[str, AgentRecord], now: float) -> None:
        with self._tx() as db:
            db.execute(
                f"DELETE FROM agents WHERE source = 'config' AND id NOT IN ({','.join('?' * len(agents))})",
                list(agents),
            )
            for agent in agents.values():
                db.execute(
                    """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, jwks, grant_spec)
                       VALUES (?, ?, ?, 'config', ?, ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, cost_center = excluded.cost_center,
                         source = 'config', jwks = excluded.jwks, grant_spec = excluded.grant_spec""",
                    (agent.id, agent.owner, agent.cost_center, 0, now,
                     _dump(agent.jwks), _dump(agent.grant)),
                )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        row = self._one("SELECT * FROM agents WHERE id = ?", agent_id)
        return _agent(row) if row else None

    async def list_agents(self) -> list[AgentRecord]:
        return [_agent(r) for r in self._all("SELECT * FROM agents ORDER BY id")]

    async def create_agent(self, agent: AgentRecord) -> bool:
        with self._errors():
            try:
                self._conn().execute(
                    """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, secret_hash, jwks,
                       grant_spec) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (agent.id, agent.owner, agent.cost_center, agent.source, int(agent.disabled), agent.created_at,
                     agent.secret_hash, _dump(agent.jwks), _dump(agent.grant)),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    async def update_agent(self, agent_id: str, **changes: Any) -> bool:
        columns = {"grant": "grant_spec"}
        values = {columns.get(k, k): (_dump(v) if k in ("jwks", "grant") else v) for k, v in changes.items()}
        assignments = ", ".join(f"{column} = ?" for column in values)
        return self._run(f"UPDATE agents SET {assignments} WHERE id = ?", *values.values(), agent_id) > 0

    # ------------------------------------------------------------ sessions

    async def create_session(self, session: SessionRecord, max_active: int | None) -> bool:
        record = _session_row(session)
        with self._tx() as db:
            if max_active is not None:
                live = db.execute(
                    f"""SELECT count(*) FROM sessions WHERE agent = ? AND {_LIVE}
                        AND expires_at > ? AND last_seen + idle_timeout > ?""",
                    (session.agent, session.created_at, session.created_at),
                ).fetchone()[0]
                if live >= max_active:
                    return False
            db.execute(
                f"INSERT INTO sessions ({','.join(record)}) VALUES ({','.join('?' * len(record))})",
                list(record.values()),
            )
        return True

    async def get_session(self, sid: str) -> SessionRecord | None:
        row = self._one("SELECT * FROM sessions WHERE sid = ?", sid)
        return _session(row) if row else None

    async def list_sessions(
        self, agent: str | None = None, state: SessionState | None = None, now: float | None = None
    ) -> list[SessionRecord]:
        rows = self._all(
            "SELECT * FROM sessions WHERE (? IS NULL OR agent = ?) ORDER BY created_at", agent, agent
        )
        sessions = [_session(r) for r in rows]
        if now is not None:  # report lazily-expired sessions as what they are
            sessions = [_as_of(s, now) for s in sessions]
        return [s for s in sessions if state is None or s.state == state]

    async def end_session(self, sid: str, state: SessionState, reason: str, now: float) -> SessionRecord | None:
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE sessions SET state = ?, reason = ?, ended_at = ? WHERE sid = ? AND {_LIVE}",
                (state, reason, now, sid),
            ).rowcount
            row = db.execute("SELECT * FROM sessions WHERE sid = ?", (sid,)).fetchone()
        return _session(row) if changed and row else None

    async def end_agent_sessions(self, agent: str, state: SessionState, reason: str, now: float) -> list[str]:
        with self._tx() as db:
            sids = [r[0] for r in db.execute(f"SELECT sid FROM sessions WHERE agent = ? AND {_LIVE}", (agent,))]
            db.execute(
                f"UPDATE sessions SET state = ?, reason = ?, ended_at = ? WHERE agent = ? AND {_LIVE}",
                (state, reason, now, agent),
            )
        return sids

    async def expire_sessions(self, now: float) -> list[SessionRecord]:
        with self._tx() as db:
            rows = db.execute(
                f"""UPDATE sessions SET state = 'expired', reason = 'expired',
                      ended_at = min(expires_at, last_seen + idle_timeout)
                    WHERE {_LIVE} AND (expires_at <= ? OR last_seen + idle_timeout <= ?) RETURNING *""",
                (now, now),
            ).fetchall()
        return [_session(r) for r in rows]

    async def renew_session(self, sid: str, expires_at: float, now: float) -> SessionRecord | None:
        row = self._one(
            f"""UPDATE sessions SET expires_at = min(?, max_expires_at), last_seen = ?
                WHERE sid = ? AND {_LIVE} AND expires_at > ? AND last_seen + idle_timeout > ? RETURNING *""",
            expires_at, now, sid, now, now,
        )
        return _session(row) if row else None

    async def touch_session(self, sid: str, now: float) -> None:
        self._run("UPDATE sessions SET last_seen = ? WHERE sid = ? AND last_seen < ?", now, sid, now)

    async def reserve(self, sid: str, now: float, calls: int, tokens: int) -> Reservation:
        row = self._one(
            """UPDATE sessions SET calls = calls + ?, tokens = tokens + ?, last_seen = ?
               WHERE sid = ? AND state = 'active' AND expires_at > ? AND last_seen + idle_timeout > ?
                 AND (calls_limit IS NULL OR calls + ? <= calls_limit)
                 AND (tokens_limit IS NULL OR tokens < tokens_limit)
               RETURNING *""",
            calls, tokens, now, sid, now, now, calls,
        )
        if row is not None:
            return Reservation(_session(row), True)
        return _refusal(await self.get_session(sid), now, calls)

    async def settle(self, sid: str, tokens: int) -> None:
        if tokens:
            self._run("UPDATE sessions SET tokens = tokens + ? WHERE sid = ?", tokens, sid)

    async def suspend_session(self, sid: str, stop: dict[str, Any], now: float) -> bool:
        return (
            self._run(
                "UPDATE sessions SET state = 'suspended', reason = ?, stop = ? WHERE sid = ? AND state = 'active'",
                stop.get("limit"), json.dumps(stop), sid,
            )
            > 0
        )

    async def resume_session(self, sid: str, add_calls: int, add_tokens: int, now: float) -> SessionRecord | None:
        row = self._one(
            f"""UPDATE sessions SET state = 'active', reason = NULL, stop = NULL, last_seen = ?,
                  calls_limit = CASE WHEN calls_limit IS NULL THEN NULL ELSE max(calls_limit, calls) + ? END,
                  tokens_limit = CASE WHEN tokens_limit IS NULL THEN NULL ELSE max(tokens_limit, tokens) + ? END
                WHERE sid = ? AND {_LIVE} RETURNING *""",
            now, add_calls, add_tokens, sid,
        )
        return _session(row) if row else None

    # ------------------------------------------------------------ replay cache, checkpoints

    async def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM seen_jti WHERE expires_at < ?", (now,))
            try:
                db.execute("INSERT INTO seen_jti (jti, expires_at) VALUES (?, ?)", (jti, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True

    async def put_checkpoint(self, instance: str, seq: int, head: str, signature: str, now: float) -> None:
        self._run(
            """INSERT INTO checkpoints (instance, seq, head, signature, updated_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, head = excluded.head,
                 signature = excluded.signature, updated_at = excluded.updated_at""",
            instance, seq, head, signature, now,
        )

    async def get_checkpoint(self, instance: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM checkpoints WHERE instance = ?", instance)
        return dict(row) if row else None


def _refusal(session: SessionRecord | None, now: float, calls: int) -> Reservation:
    if session is None:
        return Reservation(None, False, "ended")
    if session.ended_state(now) is not None:
        return Reservation(session, False, "ended")
    if session.state == "suspended":
        return Reservation(session, False, "suspended")
    if session.calls_limit is not None and session.calls + calls > session.calls_limit:
        return Reservation(session, False, "session_calls")
    return Reservation(session, False, "session_tokens")


def _as_of(session: SessionRecord, now: float) -> SessionRecord:
    ended = session.ended_state(now)
    if ended is None or ended == session.state:
        return session
    return SessionRecord(**{**asdict(session), "state": ended, "reason": ended})


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _agent(row: sqlite3.Row) -> AgentRecord:
    return AgentRecord(
        id=row["id"],
        owner=row["owner"],
        cost_center=row["cost_center"],
        source=row["source"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        secret_hash=row["secret_hash"],
        jwks=json.loads(row["jwks"]) if row["jwks"] else None,
        grant=json.loads(row["grant_spec"]) if row["grant_spec"] else None,
    )


def _session_row(session: SessionRecord) -> dict[str, Any]:
    row = asdict(session)
    row["stop"] = _dump(row["stop"])
    return row


def _session(row: sqlite3.Row) -> SessionRecord:
    values = {name: row[name] for name in _SESSION_COLUMNS}
    values["stop"] = json.loads(values["stop"]) if values["stop"] else None
    return SessionRecord(**values)
