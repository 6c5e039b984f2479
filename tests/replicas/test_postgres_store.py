"""The PostgreSQL store on its own: migrations, atomic reservations across pools, pushed changes, shared keys."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.files import GatewayConfig
from gateway.errors import StoreUnavailable
from gateway.identity.stored_keys import StoredKeyRing
from gateway.store.base import KEYS_CHANGED, RESYNC, SESSION_ENDED, Ask, KeyStore, SessionRecord, Store, StoredKey
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_schema import MIGRATIONS
from tests.budgets.test_reservation import agrees_with_the_model, operations
from tests.replicas.support import database_away
from tests.support.postgres import database

pytestmark = pytest.mark.anyio


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as dsn:
        yield dsn


@pytest.fixture
async def stores(dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two replicas' stores: separate pools on one database."""
    first, second = PostgresStore(dsn), PostgresStore(dsn)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def sql(dsn: str, statement: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetch(statement)
    finally:
        await con.close()


def session(sid: str, *, agent: str = "bot", calls_limit: int | None = None) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        sid=sid,
        agent=agent,
        owner="o@example.com",
        on_behalf_of=None,
        task=None,
        grant_version="g1",
        state="active",
        created_at=now,
        expires_at=now + 3600,
        max_expires_at=now + 3600,
        idle_timeout=900,
        last_seen=now,
        calls_limit=calls_limit,
    )


async def test_replicas_starting_together_apply_each_migration_once(dsn: str) -> None:
    replicas = [PostgresStore(dsn, pool_size=(1, 2)) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in replicas:
            tg.start_soon(store.open)
    try:
        versions = await sql(dsn, "SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for store in replicas:
            await store.close()


async def test_a_database_migrated_by_a_newer_gateway_is_refused_with_the_reason(dsn: str) -> None:
    store = PostgresStore(dsn)
    await store.open()
    await store.close()
    await sql(dsn, "INSERT INTO schema_migrations (version) VALUES (999)")
    with pytest.raises(StoreUnavailable, match="schema is at version 999, newer than this gateway's"):
        await PostgresStore(dsn).open()


async def test_an_unreachable_database_is_store_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable, match="session store unavailable"):
        await PostgresStore("postgresql://postgres@127.0.0.1:1/none").open()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 12), callers=st.integers(1, 30))
async def test_concurrent_reservations_from_two_replicas_never_pass_the_limit(
    stores: tuple[PostgresStore, PostgresStore], limit: int, callers: int
) -> None:
    sid = f"s-{limit}-{callers}-{time.monotonic_ns()}"
    assert await stores[0].create_session(session(sid, calls_limit=limit), None)
    granted: list[bool] = []

    async def reserve(store: PostgresStore) -> None:
        granted.append((await store.reserve(Ask(sid, "bot", time.time(), calls=1))).granted)

    async with anyio.create_task_group() as tg:
        for n in range(callers):
            tg.start_soon(reserve, stores[n % 2])
    assert granted.count(True) == min(limit, callers)
    stored = await stores[1].get_session(sid)
    assert stored is not None and stored.calls == min(limit, callers)


@pytest.mark.parametrize(
    ("limit", "ask", "granted"),
    [
        ("daily_tokens", {"tokens": 7, "daily_tokens": 100}, 14),  # 14 * 7 = 98 stays below 100
        ("calls_per_minute", {"calls_per_minute": 5}, 5),
    ],
)
async def test_an_agents_limits_hold_across_its_sessions_on_two_replicas(
    stores: tuple[PostgresStore, PostgresStore], limit: str, ask: dict[str, int], granted: int
) -> None:
    sids = [f"s-{n}" for n in range(4)]
    for sid in sids:
        await stores[0].create_session(session(sid), None)
    now = time.time()  # one instant: one UTC day, one clock minute
    refusals: list[str | None] = []

    async def reserve(n: int) -> None:
        result = await stores[n % 2].reserve(Ask(sids[n % 4], "bot", now, calls=1, **ask))
        refusals.append(result.refusal)

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(reserve, n)
    assert refusals.count(None) == granted and set(refusals) == {None, limit}


async def test_a_tools_cap_holds_when_one_session_calls_it_through_two_replicas(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    await stores[0].create_session(session("s-1"), None)
    refusals: list[str | None] = []

    async def reserve(n: int) -> None:
        ask = Ask("s-1", "bot", time.time(), calls=1, tool="srv.tool", tool_cap=3)
        refusals.append((await stores[n % 2].reserve(ask)).refusal)

    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(reserve, n)
    assert refusals.count(None) == 3 and set(refusals) == {None, "tool_calls"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
async def test_the_postgres_reservation_grants_exactly_what_every_limit_allows(
    stores: tuple[PostgresStore, PostgresStore], ops: list[tuple[Any, ...]]
) -> None:
    await sql(stores[0].dsn, "TRUNCATE sessions, agent_days, agent_minutes, session_tools")
    await agrees_with_the_model(stores[0], ops)


async def test_max_active_sessions_holds_across_replicas_opening_at_once(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    results: list[bool] = []

    async def create(n: int) -> None:
        results.append(await stores[n % 2].create_session(session(f"s-{n}"), 3))

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(create, n)
    assert results.count(True) == 3


async def test_a_session_ended_anywhere_is_pushed_to_every_watching_replica(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    watcher, other = stores
    seen: list[tuple[str, str]] = []
    arrived = anyio.Condition()

    async def on_change(kind: str, key: str) -> None:
        async with arrived:
            seen.append((kind, key))
            arrived.notify_all()

    async def wait_for(event: tuple[str, str]) -> None:
        with anyio.fail_after(5):
            async with arrived:
                while event not in seen:
                    await arrived.wait()

    for sid in ("s-1", "s-2", "s-3"):
        await other.create_session(session(sid), None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.watch, on_change)
        await wait_for((RESYNC, ""))
        await other.end_session("s-1", "revoked", "revoked", time.time())
        await wait_for((SESSION_ENDED, "s-1"))
        await other.end_agent_sessions("bot", "revoked", "agent disabled", time.time())
        await wait_for((SESSION_ENDED, "s-2"))
        await wait_for((SESSION_ENDED, "s-3"))
        tg.cancel_scope.cancel()
    assert seen.count((SESSION_ENDED, "s-1")) == 1


async def test_a_settlement_retried_after_the_database_was_away_counts_once(
    dsn: str,
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    store = stores[0]
    await store.create_session(session("s-1"), None)
    async with database_away(dsn):
        with pytest.raises(StoreUnavailable):  # the caller (Budgets) keeps it and retries
            await store.settle("s-1", 120, time.time(), False, "call-1")
    assert await store.settle("s-1", 120, time.time(), False, "call-1") is not None
    assert await stores[1].settle("s-1", 120, time.time(), False, "call-1") is None  # any replica's retry
    stored = await store.get_session("s-1")
    assert stored is not None and stored.tokens == 120


async def test_replicas_share_one_set_of_secrets_and_signing_keys_and_see_a_rotation(
    dsn: str,
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = stores
    assert await first.secrets({"credential": b"a" * 32}) == {"credential": b"a" * 32}
    assert await second.secrets({"credential": b"b" * 32}) == {"credential": b"a" * 32}

    config = GatewayConfig(public_url="http://127.0.0.1:1", store=dsn)
    rings = [StoredKeyRing(store, config) for store in stores]
    for ring in rings:  # both start at once: one creates the key, the other reads it
        ring.load()
    assert rings[0].active_kid == rings[1].active_kid
    old = rings[0].active_kid

    seen: list[str] = []
    watching = anyio.Event()
    rotated = anyio.Event()

    async def on_change(kind: str, key: str) -> None:
        if kind == RESYNC:
            watching.set()
        elif kind == KEYS_CHANGED:
            seen.append(kind)
            rotated.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(second.watch, on_change)
        with anyio.fail_after(5):
            await watching.wait()
            new = rings[0].rotate(time.time(), overlap=60)
            await rotated.wait()
        tg.cancel_scope.cancel()
    await rings[1].sync()
    assert rings[1].active_kid == new != old
    retired = rings[1].verify_key(old)
    assert retired is not None and retired.retired_at is not None


def test_the_postgres_store_has_every_store_method_with_the_same_signature() -> None:
    for proto in (Store, KeyStore):
        for name, member in vars(proto).items():
            if callable(member) and not name.startswith("_"):
                assert inspect.signature(getattr(PostgresStore, name)) == inspect.signature(member), name


async def test_a_key_set_read_before_a_rotation_never_undoes_it(dsn: str) -> None:
    """A periodic sync whose answer arrives after this process rotated must not bring the old key back."""

    class Lagging(PostgresStore):
        late: list[StoredKey] | None = None

        async def signing_keys(self, candidate: StoredKey | None) -> list[StoredKey]:
            return self.late if self.late is not None else await super().signing_keys(candidate)

    store = Lagging(dsn)
    await store.open()
    try:
        ring = StoredKeyRing(store, GatewayConfig(public_url="http://127.0.0.1:1", store=dsn))
        ring.load()
        store.late = await store.signing_keys(None)
        new = ring.rotate(time.time(), overlap=60)
        await ring.sync()
        assert ring.active_kid == new
    finally:
        await store.close()
