"""The embedded SQLite store (the default).

Statements are short and run on the event loop thread: a WAL-mode local file
answers in microseconds, which is cheaper than a thread hop per call. The CLI
and the gateway share the file; SQLite's locking serialises writers and
`busy_timeout` bounds the wait. Any sqlite3 error becomes `StoreUnavailable`.
Migrations (sqlite_schema.py) are applied at open.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.config.dirs import private_dir
from gateway.errors import StoreUnavailable
from gateway.spend.limits import Counters, refusal, session_refusal
from gateway.store import rows
from gateway.store.base import (
    KEEP_DAYS,
    KEEP_SETTLEMENTS,
    AgentRecord,
    Ask,
    ChangeListener,
    LoginItem,
    Reservation,
    SessionRecord,
    SessionState,
    Settled,
    clock_minute,
    utc_day,
)
from gateway.store.sqlite_schema import MIGRATIONS, statements


@functools.cache
def _reserve_statement(daily: bool, per_minute: bool, capped: bool) -> str:
    """The reservation for an ask carrying these limits, as one atomic statement: a limit the ask does not carry
    has no condition and no rollup (its usage column is written NULL), so no NULL is bound for it (sqlite3
    adapts each None parameter through failed attribute lookups) and its day or minute is never computed."""
    rollups = ", ".join(
        (
            "usage_day = :day" if daily else "usage_day = NULL",
            "usage_minute = :minute" if per_minute else "usage_minute = NULL",
            "usage_tool = :tool" if capped else "usage_tool = NULL",
        )
    )
    limits = "".join(
        condition
        for condition, carried in (
            (
                " AND coalesce((SELECT tokens FROM agent_days WHERE agent = sessions.agent AND day = :day), 0)"
                " + :tokens < :daily",
                daily,
            ),
            (
                " AND coalesce((SELECT calls FROM agent_minutes WHERE agent = sessions.agent AND minute = :minute), 0)"
                " + :calls <= :per_minute",
                per_minute,
            ),
        )
        if carried
    )
    refused = "blocked IS NOT NULL OR calls + :calls > :cap" if capped else "blocked IS NOT NULL"
    return f"""
    UPDATE sessions SET calls = calls + :calls, tokens = tokens + :tokens, last_seen = :now, {rollups}
    WHERE sid = :sid AND state = 'active' AND expires_at > :now AND last_seen + idle_timeout > :now
      AND (calls_limit IS NULL OR calls + :calls <= calls_limit)
      AND (tokens_limit IS NULL OR tokens + :tokens < tokens_limit){limits}
      AND NOT EXISTS (SELECT 1 FROM session_tools WHERE sid = :sid AND tool = :tool AND ({refused}))
    RETURNING {rows.SESSION_SELECT}
"""


_LIVE = "state IN ('active', 'suspended')"
_SETTLE = (  # no minute or tool to roll up: NULLs let the trigger skip a settlement without a day
    "UPDATE sessions SET tokens = tokens + ?, usage_day = {}, usage_minute = NULL, usage_tool = NULL "
    "WHERE sid = ? RETURNING tokens, tokens_limit, agent"
)
_SETTLE_DAY, _SETTLE_NO_DAY = _SETTLE.format("?"), _SETTLE.format("NULL")  # NULL written, not bound (a None costs)
_SESSION = f"SELECT {rows.SESSION_SELECT} FROM sessions WHERE sid = ?"  # read on every request


# SQLite's page cache, per connection. Its default (2,000 KiB) filled over the first 20,000 calls as the
# settlement keys (one a call, random, kept a day) spread over the index, and showed as RSS growing between
# benchmark runs (benchmarks/rss.py: +1.8 MB; +0.1 MB with this). The hot rows (a session, its limits) fit in
# a few pages, and a page the cache drops is a read from the OS's file cache.
CACHE_KIB = 256


class SQLiteStore:
    """Every `Store` role over one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        with _ERRORS:
            private_dir(self.path.parent)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db = db
            self._migrate()
        self.path.chmod(0o600)

    def _migrate(self) -> None:
        db = self._conn()
        with self._tx():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        with _ERRORS:
            self._conn().execute("SELECT 1").fetchone()

    async def watch(self, on_change: ChangeListener) -> None:
        return  # one process and its CLI: the gateway's periodic check sees their changes

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        with _ERRORS:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with _ERRORS:
            row: sqlite3.Row | None = self._conn().execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with _ERRORS:
            return self._conn().execute(sql, args).fetchall()

    def _run(self, sql: str, *args: Any) -> int:
        with _ERRORS:
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
                    """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, jwks, grant_spec,
                       workload, keys_at) VALUES (?, ?, ?, 'config', 0, ?, ?, ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, cost_center = excluded.cost_center,
                         source = 'config', jwks = excluded.jwks, grant_spec = excluded.grant_spec,
                         workload = excluded.workload,
                         keys_at = CASE WHEN agents.jwks IS excluded.jwks THEN agents.keys_at
                                        ELSE excluded.keys_at END""",
                    rows.config_agent(agent, now),
                )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        row = self._one("SELECT * FROM agents WHERE id = ?", agent_id)
        return rows.agent(row) if row else None

    async def list_agents(self) -> list[AgentRecord]:
        return [rows.agent(r) for r in self._all("SELECT * FROM agents ORDER BY id")]

    async def agent_for_workload(self, issuer: str, subject: str) -> AgentRecord | None:
        row = self._one("SELECT * FROM agents WHERE workload = ?", rows.workload_key(issuer, subject))
        return rows.agent(row) if row else None

    async def create_agent(self, agent: AgentRecord) -> bool:
        with _ERRORS:
            try:
                self._conn().execute(
                    """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, secret_hash, jwks,
                       grant_spec, workload, secret_at, keys_at, lifecycle)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    rows.new_agent(agent),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    async def last_seen_by_agent(self) -> dict[str, float]:
        return {
            r["agent"]: r["last_seen"]
            for r in self._all("SELECT agent, MAX(last_seen) AS last_seen FROM sessions GROUP BY agent")
        }

    async def update_agent(self, agent_id: str, **changes: Any) -> bool:
        values = rows.agent_changes(changes)
        assignments = ", ".join(f"{column} = ?" for column in values)
        return self._run(f"UPDATE agents SET {assignments} WHERE id = ?", *values.values(), agent_id) > 0

    # ------------------------------------------------------------ sessions

    async def create_session(self, session: SessionRecord, max_active: int | None) -> bool:
        record = rows.session_values(session)
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
        row = self._one(_SESSION, sid)
        return rows.session_of(row) if row else None

    async def list_sessions(
        self, agent: str | None = None, state: SessionState | None = None, now: float | None = None
    ) -> list[SessionRecord]:
        found = self._all(
            f"""SELECT {rows.SESSION_SELECT} FROM sessions
                WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR {rows.state_at("?3")} = ?2) ORDER BY created_at""",
            agent,
            state,
            now,
        )
        return rows.listed(found, now)

    async def end_session(self, sid: str, state: SessionState, reason: str, now: float) -> SessionRecord | None:
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE sessions SET state = ?, reason = ?, ended_at = ? WHERE sid = ? AND {_LIVE}",
                (state, reason, now, sid),
            ).rowcount
            row = db.execute(_SESSION, (sid,)).fetchone()
        return rows.session_of(row) if changed and row else None

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
            expired = db.execute(
                f"""UPDATE sessions SET state = 'expired', reason = 'expired',
                      ended_at = min(expires_at, last_seen + idle_timeout)
                    WHERE {_LIVE} AND (expires_at <= ? OR last_seen + idle_timeout <= ?)
                    RETURNING {rows.SESSION_SELECT}""",
                (now, now),
            ).fetchall()
        return [rows.session_of(r) for r in expired]

    async def renew_session(self, sid: str, expires_at: float, now: float) -> SessionRecord | None:
        row = self._one(
            f"""UPDATE sessions SET expires_at = min(?, max_expires_at), last_seen = ?
                WHERE sid = ? AND {_LIVE} AND expires_at > ? AND last_seen + idle_timeout > ?
                RETURNING {rows.SESSION_SELECT}""",
            expires_at,
            now,
            sid,
            now,
            now,
        )
        return rows.session_of(row) if row else None

    async def touch_session(self, sid: str, now: float) -> None:
        self._run("UPDATE sessions SET last_seen = ? WHERE sid = ? AND last_seen < ?", now, sid, now)

    async def reserve(self, ask: Ask) -> Reservation:
        daily, per_minute, cap = ask.daily_tokens, ask.calls_per_minute, ask.tool_cap
        params: dict[str, Any] = {
            "sid": ask.sid,
            "now": ask.now,
            "calls": ask.calls,
            "tokens": ask.tokens,
            "tool": ask.tool,
        }
        if daily is not None:
            params.update(day=ask.day, daily=daily)
        if per_minute is not None:
            params.update(minute=ask.minute, per_minute=per_minute)
        if cap is not None:
            params["cap"] = cap
        statement = _reserve_statement(daily is not None, per_minute is not None, cap is not None)
        with _ERRORS:
            row = self._conn().execute(statement, params).fetchone()
        if row is not None:
            return Reservation(rows.session_of(row), True)
        session = await self.get_session(ask.sid)
        return session_refusal(session, ask) or refusal(session, ask, self._counters(ask))

    def _counters(self, ask: Ask) -> Counters:
        day = self._one("SELECT tokens FROM agent_days WHERE agent = ? AND day = ?", ask.agent, ask.day)
        minute = self._one("SELECT calls FROM agent_minutes WHERE agent = ? AND minute = ?", ask.agent, ask.minute)
        tool = self._one("SELECT calls, blocked FROM session_tools WHERE sid = ? AND tool = ?", ask.sid, ask.tool)
        return Counters(
            day_tokens=day[0] if day else 0,
            minute_calls=minute[0] if minute else 0,
            tool_calls=tool[0] if tool else 0,
            tool_block=rows.load(tool[1]) if tool else None,
        )

    async def regrant(self, sid: str, grant_version: str, calls_limit: int | None, tokens_limit: int | None) -> None:
        self._run(
            f"""UPDATE sessions SET grant_version = ?, calls_limit = ?, tokens_limit = ?
                WHERE sid = ? AND grant_version <> ? AND {_LIVE}""",
            grant_version,
            calls_limit,
            tokens_limit,
            sid,
            grant_version,
        )

    async def release(self, ask: Ask, key: str) -> None:
        with self._tx() as db:
            if not _first_use(db, key, ask.sid, -ask.tokens, ask.now):
                return
            # The trigger takes the same amounts back from the agent's day; the minute keeps the call.
            db.execute(
                "UPDATE sessions SET calls = max(calls - ?, 0), tokens = max(tokens - ?, 0), usage_day = ?, "
                "usage_minute = NULL, usage_tool = NULL WHERE sid = ?",
                (ask.calls, ask.tokens, ask.counted_day, ask.sid),
            )
            if ask.counted_tool is not None:
                db.execute(
                    "UPDATE session_tools SET calls = max(calls - ?, 0) WHERE sid = ? AND tool = ?",
                    (ask.calls, ask.sid, ask.counted_tool),
                )

    async def settle(self, sid: str, tokens: int, now: float, daily: bool, key: str) -> Settled | None:
        day = utc_day(now) if daily else None
        with self._tx() as db:
            if not _first_use(db, key, sid, tokens, now):
                return None
            if day is None:
                row = db.execute(_SETTLE_NO_DAY, (tokens, sid)).fetchone()
            else:
                row = db.execute(_SETTLE_DAY, (tokens, day, sid)).fetchone()
            if row is None:
                return None
            total = None
            if day is not None:
                found = db.execute(
                    "SELECT tokens FROM agent_days WHERE agent = ? AND day = ?", (row[2], day)
                ).fetchone()
                total = int(found[0]) if found else 0
        return Settled(row[0], row[1], total)

    async def count_attempt(self, agent: str, now: float, limit: int) -> int | None:
        minute = clock_minute(now)
        with self._tx() as db:
            counted = db.execute(
                """INSERT INTO agent_minutes (agent, minute, calls) VALUES (?, ?, 1)
                   ON CONFLICT (agent, minute) DO UPDATE SET calls = calls + 1 WHERE calls < ? RETURNING calls""",
                (agent, minute, limit),
            ).fetchone()
            if counted is not None:
                return None
            used = db.execute(
                "SELECT calls FROM agent_minutes WHERE agent = ? AND minute = ?", (agent, minute)
            ).fetchone()
        return int(used[0]) if used else limit

    async def block_tool(self, sid: str, tool: str, stop: dict[str, Any]) -> bool:
        return (
            self._run(
                """INSERT INTO session_tools (sid, tool, blocked) VALUES (?, ?, ?)
                   ON CONFLICT (sid, tool) DO UPDATE SET blocked = excluded.blocked WHERE blocked IS NULL""",
                sid,
                tool,
                rows.dump(stop),
            )
            > 0
        )

    async def first_alert(self, scope: str, limit: str, share: float) -> bool:
        return self._run("INSERT OR IGNORE INTO budget_alerts VALUES (?, ?, ?)", scope, limit, share) > 0

    async def prune_usage(self, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM agent_minutes WHERE minute < ?", (clock_minute(now) - 1,))
            db.execute("DELETE FROM agent_days WHERE day < ?", (utc_day(now - KEEP_DAYS * 86400),))
            db.execute("DELETE FROM settlements WHERE applied_at < ?", (now - KEEP_SETTLEMENTS,))

    async def suspend_session(self, sid: str, stop: dict[str, Any]) -> bool:
        return (
            self._run(
                "UPDATE sessions SET state = 'suspended', reason = ?, stop = ? WHERE sid = ? AND state = 'active'",
                stop.get("limit"),
                rows.dump(stop),
                sid,
            )
            > 0
        )

    async def resume_session(self, sid: str, add_calls: int, add_tokens: int, now: float) -> SessionRecord | None:
        with self._tx() as db:
            row = db.execute(
                f"""UPDATE sessions SET state = 'active', reason = NULL, stop = NULL, last_seen = ?,
                      calls_limit = CASE WHEN calls_limit IS NULL THEN NULL ELSE max(calls_limit, calls) + ? END,
                      tokens_limit = CASE WHEN tokens_limit IS NULL THEN NULL ELSE max(tokens_limit, tokens) + ? END
                    WHERE sid = ? AND {_LIVE} RETURNING {rows.SESSION_SELECT}""",
                (now, add_calls, add_tokens, sid),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE session_tools SET blocked = NULL WHERE sid = ?", (sid,))
        return rows.session_of(row)

    # ------------------------------------------------------------ replay cache, checkpoints

    async def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM seen_jti WHERE expires_at < ?", (now,))
            try:
                db.execute("INSERT INTO seen_jti (jti, expires_at) VALUES (?, ?)", (jti, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True

    # ------------------------------------------------------------ sign-in items

    async def put_login_item(self, kind: str, key: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM login_items WHERE expires_at < ?", (now,))
            inserted: int = db.execute(
                "INSERT OR IGNORE INTO login_items (kind, key, data, expires_at) VALUES (?, ?, ?, ?)",
                (kind, key, rows.dump(data), expires_at),
            ).rowcount
        return inserted > 0

    async def get_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        row = self._one("SELECT * FROM login_items WHERE kind = ? AND key = ? AND expires_at > ?", kind, key, now)
        return LoginItem(rows.load(row["data"]), row["used_at"]) if row else None

    async def use_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM login_items WHERE kind = ? AND key = ? AND expires_at > ?", (kind, key, now)
            ).fetchone()
            if row is None:
                return None
            if row["used_at"] is None:
                db.execute("UPDATE login_items SET used_at = ? WHERE kind = ? AND key = ?", (now, kind, key))
        return LoginItem(rows.load(row["data"]), row["used_at"])

    async def put_checkpoint(self, instance: str, seq: int, head: str, signature: str, now: float) -> None:
        self._run(
            """INSERT INTO checkpoints (instance, seq, head, signature, updated_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, head = excluded.head,
                 signature = excluded.signature, updated_at = excluded.updated_at""",
            instance,
            seq,
            head,
            signature,
            now,
        )

    async def get_checkpoint(self, instance: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM checkpoints WHERE instance = ?", instance)
        return dict(row) if row else None


class _StoreErrors:
    """Any sqlite3 error raised inside as `StoreUnavailable`. A class, not `@contextmanager`: it wraps every
    statement, and a generator-based one costs a generator and two resumptions each time; stateless, so one
    instance serves every use."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, sqlite3.Error):
            raise StoreUnavailable(f"session store error: {exc}") from exc


_ERRORS = _StoreErrors()


def _first_use(db: sqlite3.Connection, key: str, sid: str, tokens: int, now: float) -> bool:
    """Record that the settlement or release `key` is applied, in the caller's transaction; False if it was."""
    inserted: int = db.execute(
        "INSERT OR IGNORE INTO settlements (key, sid, tokens, applied_at) VALUES (?, ?, ?, ?)", (key, sid, tokens, now)
    ).rowcount
    return inserted > 0
