"""The PostgreSQL store: N gateway replicas on one database.

Every check is a statement against the shared rows, so a close, revocation or
budget stop made anywhere (a replica, the CLI) holds for the next call on every
replica. The per-call check and reservation is one statement, the function
`gateway_reserve` (postgres_schema.py): an `UPDATE sessions ... WHERE sid = $1
AND state = 'active' AND <every limit> RETURNING *`, so concurrent calls on one
session serialise on its row and a budget drains exactly once across replicas;
limits shared by an agent's sessions take the agent's advisory lock first. A
trigger NOTIFYs when a session ends and `watch` LISTENs, so replicas cut that
session's open streams at once; the per-call check is the safety net.

Migrations (postgres_schema.py) are applied at open, in one transaction under an
advisory lock, so replicas starting together do not race. Every asyncpg or
socket failure becomes `StoreUnavailable` and the caller refuses (fail closed).
Only this module imports asyncpg; SQLite deployments never load it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectSendStream

from gateway.errors import StoreUnavailable
from gateway.spend.limits import Counters, refusal, session_refusal
from gateway.store import rows
from gateway.store.base import (
    KEEP_DAYS,
    KEEP_SETTLEMENTS,
    KEYS_CHANGED,
    RESYNC,
    SESSION_ENDED,
    AgentRecord,
    Ask,
    ChangeListener,
    LoginItem,
    Reservation,
    SessionRecord,
    SessionState,
    Settled,
    StoredKey,
    clock_minute,
    utc_day,
)
from gateway.store.postgres_schema import KEYS_CHANNEL, MIGRATIONS, SESSION_ENDED_CHANNEL

log = logging.getLogger("gateway.store.postgres")

POOL_SIZE = (2, 10)  # (min, max) connections per process
CONNECT_TIMEOUT = 5.0  # seconds to open a connection before the store counts as unavailable
STATEMENT_TIMEOUT = 10.0  # seconds a statement may take before the store counts as unavailable
KEEPALIVE = 2.0  # seconds between checks that the LISTEN connection is still alive
_MIGRATION_LOCK = 0x6D63_7067_776D  # advisory lock ids: arbitrary, fixed for this schema
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)  # TimeoutError too
_CHANNELS = {SESSION_ENDED_CHANNEL: SESSION_ENDED, KEYS_CHANNEL: KEYS_CHANGED}
_LIVE = "state IN ('active', 'suspended')"
_NOT_OVER = "expires_at > $2 AND last_seen + idle_timeout > $2"
_INSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(rows.SESSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(rows.SESSION_COLUMNS) + 1))})"
)

T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except _ERRORS as exc:
        raise StoreUnavailable(f"session store unavailable: {exc or type(exc).__name__}") from exc


def _count(status: str) -> int:
    """Rows touched, from a command status such as "UPDATE 3" or "INSERT 0 1"."""
    return int(status.rsplit(" ", 1)[-1])


_JTI_PRUNE_EVERY = 1.0  # seconds between deletions of expired single-use ids


class PostgresStore:
    """`Store` and `KeyStore` over one PostgreSQL database shared by every replica."""

    def __init__(self, dsn: str, *, pool_size: tuple[int, int] = POOL_SIZE) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._jti_pruned_at = float("-inf")

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        with _errors():
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_size[0],
                max_size=self.pool_size[1],
                timeout=CONNECT_TIMEOUT,
                command_timeout=STATEMENT_TIMEOUT,
            )
            try:
                async with pool.acquire() as con:
                    await _migrate(con)
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(5, shield=True) as waited:
                await pool.close()
            if waited.cancelled_caught:
                pool.terminate()

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    def run_blocking(self, work: Callable[[PostgresStore], Awaitable[T]]) -> T:
        """Run `work` from synchronous code (startup, key loads) against a store of its own.

        It gets one connection in a worker thread with its own event loop, so the caller's loop
        and pool are never shared across threads.
        """

        async def main() -> T:
            store = PostgresStore(self.dsn, pool_size=(1, 1))
            await store.open()
            try:
                return await work(store)
            finally:
                await store.close()

        with ThreadPoolExecutor(1, thread_name_prefix="store-blocking") as worker:
            return worker.submit(anyio.run, main).result()

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        with _errors():
            return await self._p().fetchrow(sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        with _errors():
            rows: list[asyncpg.Record] = await self._p().fetch(sql, *args)
            return rows

    async def _execute(self, sql: str, *args: Any) -> int:
        with _errors():
            return _count(await self._p().execute(sql, *args))

    @asynccontextmanager
    async def _tx(self) -> Any:
        with _errors():
            async with self._p().acquire() as con, con.transaction():
                yield con

    # ------------------------------------------------------------ changes made elsewhere

    async def watch(self, on_change: ChangeListener) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[str, str]](1000)
        async with anyio.create_task_group() as tg, send, receive:
            tg.start_soon(self._listen, send)
            async for kind, key in receive:
                await on_change(kind, key)

    async def _listen(self, send: MemoryObjectSendStream[tuple[str, str]]) -> None:
        """Hold a LISTEN connection, reconnecting with backoff; what is missed meanwhile the periodic check finds."""

        def deliver(_con: object, _pid: int, channel: str, payload: str) -> None:
            try:
                send.send_nowait((_CHANNELS[channel], payload))
            except anyio.WouldBlock:
                log.warning("store watch: dropped a change notification (the periodic check will catch it)")

        delay = 0.5
        while True:
            try:
                con = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
            except _ERRORS as exc:
                log.warning("store watch: cannot connect: %s", exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            try:
                for channel in _CHANNELS:
                    await con.add_listener(channel, deliver)
                await send.send((RESYNC, ""))
                while not con.is_closed():
                    await anyio.sleep(KEEPALIVE)
                    await con.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
            except _ERRORS as exc:
                log.warning("store watch: connection lost: %s", exc)
            finally:
                con.terminate()

    # ------------------------------------------------------------ agents

    async def sync_config_agents(self, agents: dict[str, AgentRecord], now: float) -> None:
        async with self._tx() as con:
            await con.execute("LOCK TABLE agents IN SHARE ROW EXCLUSIVE MODE")  # replicas start together
            await con.execute("DELETE FROM agents WHERE source = 'config' AND NOT id = ANY($1::text[])", list(agents))
            await con.executemany(
                """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, jwks, grant_spec, workload,
                     keys_at)
                   VALUES ($1, $2, $3, 'config', false, $4, $5, $6, $7, $8)
                   ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, cost_center = excluded.cost_center,
                     source = 'config', jwks = excluded.jwks, grant_spec = excluded.grant_spec,
                     workload = excluded.workload,
                     keys_at = CASE WHEN agents.jwks IS NOT DISTINCT FROM excluded.jwks THEN agents.keys_at
                                    ELSE excluded.keys_at END""",
                [rows.config_agent(a, now) for a in agents.values()],
            )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        row = await self._fetchrow("SELECT * FROM agents WHERE id = $1", agent_id)
        return rows.agent(row) if row else None

    async def list_agents(self) -> list[AgentRecord]:
        return [rows.agent(r) for r in await self._fetch("SELECT * FROM agents ORDER BY id")]

    async def agent_for_workload(self, issuer: str, subject: str) -> AgentRecord | None:
        row = await self._fetchrow("SELECT * FROM agents WHERE workload = $1", rows.workload_key(issuer, subject))
        return rows.agent(row) if row else None

    async def create_agent(self, agent: AgentRecord) -> bool:
        return (
            await self._execute(
                """INSERT INTO agents (id, owner, cost_center, source, disabled, created_at, secret_hash, jwks,
                   grant_spec, workload, secret_at, keys_at, lifecycle)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING""",
                *rows.new_agent(agent),
            )
            > 0
        )

    async def last_seen_by_agent(self) -> dict[str, float]:
        return {
            r["agent"]: r["last_seen"]
            for r in await self._fetch("SELECT agent, MAX(last_seen) AS last_seen FROM sessions GROUP BY agent")
        }

    async def update_agent(self, agent_id: str, **changes: Any) -> bool:
        values = rows.agent_changes(changes)
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(values, start=2))
        return await self._execute(f"UPDATE agents SET {assignments} WHERE id = $1", agent_id, *values.values()) > 0

    # ------------------------------------------------------------ sessions

    async def create_session(self, session: SessionRecord, max_active: int | None) -> bool:
        async with self._tx() as con:
            if max_active is not None:  # count and insert under the agent's lock, across replicas
                await con.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"sessions:{session.agent}")
                live = await con.fetchval(
                    f"SELECT count(*) FROM sessions WHERE agent = $1 AND {_LIVE} AND {_NOT_OVER}",
                    session.agent,
                    session.created_at,
                )
                if live >= max_active:
                    return False
            await con.execute(_INSERT_SESSION, *rows.session_values(session).values())
        return True

    async def get_session(self, sid: str) -> SessionRecord | None:
        row = await self._fetchrow("SELECT * FROM sessions WHERE sid = $1", sid)
        return rows.session(row) if row else None

    async def list_sessions(
        self, agent: str | None = None, state: SessionState | None = None, now: float | None = None
    ) -> list[SessionRecord]:
        found = await self._fetch(
            f"""SELECT * FROM sessions WHERE ($1::text IS NULL OR agent = $1)
                  AND ($2::text IS NULL OR {rows.state_at("$3::float8")} = $2) ORDER BY created_at""",
            agent,
            state,
            now,
        )
        return rows.listed(found, now)

    async def end_session(self, sid: str, state: SessionState, reason: str, now: float) -> SessionRecord | None:
        row = await self._fetchrow(
            f"UPDATE sessions SET state = $2, reason = $3, ended_at = $4 WHERE sid = $1 AND {_LIVE} RETURNING *",
            sid,
            state,
            reason,
            now,
        )
        return rows.session(row) if row else None

    async def end_agent_sessions(self, agent: str, state: SessionState, reason: str, now: float) -> list[str]:
        ended = await self._fetch(
            f"""UPDATE sessions SET state = $2, reason = $3, ended_at = $4 WHERE agent = $1 AND {_LIVE}
                RETURNING sid""",
            agent,
            state,
            reason,
            now,
        )
        return [r["sid"] for r in ended]

    async def expire_sessions(self, now: float) -> list[SessionRecord]:
        expired = await self._fetch(
            f"""UPDATE sessions SET state = 'expired', reason = 'expired',
                  ended_at = LEAST(expires_at, last_seen + idle_timeout)
                WHERE {_LIVE} AND (expires_at <= $1 OR last_seen + idle_timeout <= $1) RETURNING *""",
            now,
        )
        return [rows.session(r) for r in expired]

    async def renew_session(self, sid: str, expires_at: float, now: float) -> SessionRecord | None:
        row = await self._fetchrow(
            f"""UPDATE sessions SET expires_at = LEAST($3, max_expires_at), last_seen = GREATEST(last_seen, $2)
                WHERE sid = $1 AND {_LIVE} AND {_NOT_OVER} RETURNING *""",
            sid,
            now,
            expires_at,
        )
        return rows.session(row) if row else None

    async def touch_session(self, sid: str, now: float) -> None:
        await self._execute("UPDATE sessions SET last_seen = $2 WHERE sid = $1 AND last_seen < $2", sid, now)

    async def reserve(self, ask: Ask) -> Reservation:
        row = await self._fetchrow(
            "SELECT * FROM gateway_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            ask.sid,
            ask.now,
            ask.calls,
            ask.tokens,
            ask.day,
            ask.minute,
            ask.tool,
            ask.tool_cap,
            ask.daily_tokens,
            ask.calls_per_minute,
        )
        if row is not None:
            return Reservation(rows.session(row), True)
        session = await self.get_session(ask.sid)
        return session_refusal(session, ask) or refusal(session, ask, await self._counters(ask))

    async def _counters(self, ask: Ask) -> Counters:
        row = await self._fetchrow(
            """SELECT (SELECT tokens FROM agent_days WHERE agent = $1 AND day = $2) AS day_tokens,
                      (SELECT calls FROM agent_minutes WHERE agent = $1 AND minute = $3) AS minute_calls,
                      t.calls AS tool_calls, t.blocked
               FROM (SELECT 1) AS one LEFT JOIN session_tools t ON t.sid = $4 AND t.tool = $5""",
            ask.agent,
            ask.day,
            ask.minute,
            ask.sid,
            ask.tool,
        )
        assert row is not None
        return Counters(
            day_tokens=row["day_tokens"] or 0,
            minute_calls=row["minute_calls"] or 0,
            tool_calls=row["tool_calls"] or 0,
            tool_block=rows.load(row["blocked"]),
        )

    async def regrant(self, sid: str, grant_version: str, calls_limit: int | None, tokens_limit: int | None) -> None:
        await self._execute(
            f"""UPDATE sessions SET grant_version = $2, calls_limit = $3, tokens_limit = $4
                WHERE sid = $1 AND grant_version <> $2 AND {_LIVE}""",
            sid,
            grant_version,
            calls_limit,
            tokens_limit,
        )

    async def release(self, ask: Ask, key: str) -> None:
        await self._fetchrow(
            "SELECT gateway_release($1, $2, $3, $4, $5, $6, $7)",
            key,
            ask.sid,
            ask.now,
            ask.calls,
            ask.tokens,
            ask.counted_day,
            ask.counted_tool,
        )

    async def settle(self, sid: str, tokens: int, now: float, daily: bool, key: str) -> Settled | None:
        row = await self._fetchrow(
            "SELECT * FROM gateway_settle_once($1, $2, $3, $4, $5)",
            key,
            sid,
            tokens,
            utc_day(now) if daily else None,
            now,
        )
        return Settled(*row.values()) if row is not None else None

    async def count_attempt(self, agent: str, now: float, limit: int) -> int | None:
        used = await self._fetchrow("SELECT gateway_count_attempt($1, $2, $3)", agent, clock_minute(now), limit)
        assert used is not None
        return None if used[0] is None else int(used[0])

    async def block_tool(self, sid: str, tool: str, stop: dict[str, Any]) -> bool:
        return (
            await self._execute(
                """INSERT INTO session_tools AS t (sid, tool, blocked) VALUES ($1, $2, $3)
                   ON CONFLICT (sid, tool) DO UPDATE SET blocked = excluded.blocked WHERE t.blocked IS NULL""",
                sid,
                tool,
                rows.dump(stop),
            )
            > 0
        )

    async def first_alert(self, scope: str, limit: str, share: float) -> bool:
        return (
            await self._execute(
                "INSERT INTO budget_alerts (scope, limit_name, share) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                scope,
                limit,
                share,
            )
            > 0
        )

    async def prune_usage(self, now: float) -> None:
        async with self._tx() as con:
            await con.execute("DELETE FROM agent_minutes WHERE minute < $1", clock_minute(now) - 1)
            await con.execute("DELETE FROM agent_days WHERE day < $1", utc_day(now - KEEP_DAYS * 86400))
            await con.execute("DELETE FROM settlements WHERE applied_at < $1", now - KEEP_SETTLEMENTS)

    async def suspend_session(self, sid: str, stop: dict[str, Any]) -> bool:
        return (
            await self._execute(
                "UPDATE sessions SET state = 'suspended', reason = $2, stop = $3 WHERE sid = $1 AND state = 'active'",
                sid,
                stop.get("limit"),
                rows.dump(stop),
            )
            > 0
        )

    async def resume_session(self, sid: str, add_calls: int, add_tokens: int, now: float) -> SessionRecord | None:
        async with self._tx() as con:
            row = await con.fetchrow(
                f"""UPDATE sessions SET state = 'active', reason = NULL, stop = NULL,
                      last_seen = GREATEST(last_seen, $2),
                      calls_limit = CASE WHEN calls_limit IS NULL THEN NULL ELSE GREATEST(calls_limit, calls) + $3 END,
                      tokens_limit = CASE WHEN tokens_limit IS NULL THEN NULL
                                          ELSE GREATEST(tokens_limit, tokens) + $4 END
                    WHERE sid = $1 AND {_LIVE} RETURNING *""",
                sid,
                now,
                add_calls,
                add_tokens,
            )
            if row is None:
                return None
            await con.execute("UPDATE session_tools SET blocked = NULL WHERE sid = $1", sid)
        return rows.session(row)

    # ------------------------------------------------------------ replay cache, checkpoints

    async def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        # One round trip per id: DPoP spends one on every request. Expired ids are pruned at most once a
        # second; one that expired since then still counts as seen, which only ever refuses more.
        if now - self._jti_pruned_at >= _JTI_PRUNE_EVERY or now < self._jti_pruned_at:
            self._jti_pruned_at = now
            await self._execute("DELETE FROM seen_jti WHERE expires_at < $1", now)
        row = await self._fetchrow(
            "INSERT INTO seen_jti (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING RETURNING true",
            jti,
            expires_at,
        )
        return row is not None

    # ------------------------------------------------------------ sign-in items

    async def put_login_item(self, kind: str, key: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        await self._execute("DELETE FROM login_items WHERE expires_at < $1", now)
        row = await self._fetchrow(
            """INSERT INTO login_items (kind, key, data, expires_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (kind, key) DO NOTHING RETURNING true""",
            kind,
            key,
            rows.dump(data),
            expires_at,
        )
        return row is not None

    async def get_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        row = await self._fetchrow(
            "SELECT * FROM login_items WHERE kind = $1 AND key = $2 AND expires_at > $3", kind, key, now
        )
        return LoginItem(rows.load(row["data"]), row["used_at"]) if row else None

    async def use_login_item(self, kind: str, key: str, now: float) -> LoginItem | None:
        # One statement: the row as it was before this use (used_at NULL: this is the first use).
        row = await self._fetchrow(
            """UPDATE login_items AS l SET used_at = coalesce(l.used_at, $3)
               FROM (SELECT kind, key, used_at FROM login_items WHERE kind = $1 AND key = $2 AND expires_at > $3
                     FOR UPDATE) AS before
               WHERE l.kind = before.kind AND l.key = before.key
               RETURNING l.data, before.used_at""",
            kind,
            key,
            now,
        )
        return LoginItem(rows.load(row["data"]), row["used_at"]) if row else None

    async def put_checkpoint(self, instance: str, seq: int, head: str, signature: str, now: float) -> None:
        await self._execute(
            """INSERT INTO checkpoints (instance, seq, head, signature, updated_at) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, head = excluded.head,
                 signature = excluded.signature, updated_at = excluded.updated_at""",
            instance,
            seq,
            head,
            signature,
            now,
        )

    async def get_checkpoint(self, instance: str) -> dict[str, Any] | None:
        row = await self._fetchrow("SELECT * FROM checkpoints WHERE instance = $1", instance)
        return dict(row) if row else None

    # ------------------------------------------------------------ key material (KeyStore)

    async def secrets(self, candidates: dict[str, bytes]) -> dict[str, bytes]:
        async with self._tx() as con:
            await con.executemany(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", candidates.items()
            )
            found = await con.fetch("SELECT name, value FROM secrets WHERE name = ANY($1::text[])", list(candidates))
        return {r["name"]: bytes(r["value"]) for r in found}

    async def signing_keys(self, candidate: StoredKey | None) -> list[StoredKey]:
        if candidate is not None:  # the one-active-key index turns a second first start into a no-op
            await self._execute(
                "INSERT INTO signing_keys (kid, pem) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                candidate.kid,
                candidate.pem,
            )
        found = await self._fetch("SELECT kid, pem, retired_at, verify_until, generation FROM signing_keys")
        return [
            StoredKey(r["kid"], bytes(r["pem"]), r["retired_at"], r["verify_until"], r["generation"]) for r in found
        ]

    async def rotate_signing_key(self, new: StoredKey, now: float, overlap: float) -> None:
        async with self._tx() as con:
            await con.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")  # one rotation at a time
            await con.execute(
                "UPDATE signing_keys SET retired_at = $1, verify_until = $2 WHERE retired_at IS NULL",
                now,
                now + overlap,
            )
            await con.execute("DELETE FROM signing_keys WHERE verify_until < $1", now)
            await con.execute("INSERT INTO signing_keys (kid, pem) VALUES ($1, $2)", new.kid, new.pem)
            await con.execute(f"NOTIFY {KEYS_CHANNEL}")


async def _migrate(con: asyncpg.Connection) -> None:
    """Apply pending migrations; the advisory lock makes replicas starting together take turns."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await con.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > len(MIGRATIONS):
            raise StoreUnavailable(
                f"the database schema is at version {current}, newer than this gateway's {len(MIGRATIONS)}: "
                "upgrade the gateway"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await con.execute(script)
            await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
