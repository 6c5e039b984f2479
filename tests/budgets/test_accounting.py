"""Exact accounting under faults: a refused call spends nothing, a settlement counts once, and none is lost.

Regression tests for issue 12, findings 9 (a reservation kept after the durable tool.call failed),
10 (a settlement retried after a cut PostgreSQL connection counted twice) and 11 (a store failure
while settling on SQLite answered "nothing was forwarded" after the upstream ran, and lost the tokens).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from gateway.errors import StoreUnavailable
from gateway.store.base import SessionRecord, Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from tests.audit.conftest import audit_running
from tests.audit.test_audit_gateway import _point_at_a_full_disk
from tests.support.counter import agent, counter_manifest, sid_of, stop_of, upstream_calls
from tests.support.cutting_proxy import cutting_proxy
from tests.support.harness import Harness, dynamic_manifest, running_gateway, write_config
from tests.support.postgres import database

pytestmark = pytest.mark.anyio

SLOW = {"bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.slow"], "budget": {"daily_tokens": 10**6}}}}


async def until(condition: Any, timeout: float = 20) -> None:
    """Wait for `condition()` (re-checked as the event loop runs), failing after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.02)


async def admitted(gw: Harness) -> str:
    """The call id of the first call the gateway admitted (its durable tool.call allow), once there is one."""

    async def found() -> bool:
        return any(r["decision"] == "allow" for r in gw.audit("tool.call"))

    await until(found)
    return next(r["call_id"] for r in gw.audit("tool.call") if r["decision"] == "allow")


async def test_a_call_refused_because_its_audit_record_could_not_be_written_spends_no_budget(tmp_path: Path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], agents={"bot": agent({"session_calls": 3, "daily_tokens": 10**6})}
    ) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            assert not (await client.call_tool("counter__echo", {"text": "1"})).is_error
            restore = _point_at_a_full_disk(gw.gateway.config.audit.path)
            with pytest.raises(MCPError, match="nothing was forwarded"):
                await client.call_tool("counter__echo", {"text": "2"})
            restore()
            for text in ("3", "4"):  # the refused call left the budget as it found it
                assert not (await client.call_tool("counter__echo", {"text": text})).is_error
            stop = stop_of(await client.call_tool("counter__echo", {"text": "5"}))
            assert (stop["limit"], stop["used"], stop["max"]) == ("session_calls", 3, 3)
        assert upstream_calls(log) == ["echo 1", "echo 3", "echo 4"]
        session = await gw.gateway.store.get_session(await sid_of(gw, token))
        forwarded = [r for r in gw.audit("tool.call") if r["decision"] == "allow"]
        assert session is not None and session.calls == len(forwarded) == 3
        assert session.tokens == sum(r["request_tokens"] + r["response_tokens"] for r in gw.audit("tool.result"))


@contextlib.asynccontextmanager
async def each_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    if kind == "sqlite":
        sqlite = SQLiteStore(tmp_path / "gateway.db")
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    async with database() as dsn:
        postgres = PostgresStore(dsn)
        await postgres.open()
        try:
            yield postgres
        finally:
            await postgres.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_settlement_applied_twice_with_the_same_call_id_counts_once(kind: str, tmp_path: Path):
    now = time.time()
    async with each_store(kind, tmp_path) as store:
        await store.create_session(
            SessionRecord(
                sid="s",
                agent="bot",
                owner="o@example.com",
                on_behalf_of=None,
                task=None,
                grant_version="g",
                state="active",
                created_at=now,
                expires_at=now + 3600,
                max_expires_at=now + 3600,
                idle_timeout=900,
                last_seen=now,
            ),
            None,
        )
        first = await store.settle("s", 120, now, True, "call-1")
        assert first is not None and (first.tokens, first.day_tokens) == (120, 120)
        assert await store.settle("s", 120, now, True, "call-1") is None  # the retry
        later = await store.settle("s", 5, now, True, "call-2")
        assert later is not None and (later.tokens, later.day_tokens) == (125, 125)
        session = await store.get_session("s")
        assert session is not None and session.tokens == 125


async def test_a_store_locked_while_settling_still_answers_records_the_result_and_counts_the_tokens_later(
    tmp_path: Path,
):
    extra = {"store": "sqlite:///state/gateway.db"}  # SQLite's own failure: another writer holds the lock
    async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=SLOW, extra=extra) as gw:
        token = await gw.open_session("bot")
        sid = await sid_of(gw, token)
        locker = sqlite3.connect(gw.gateway.config.sqlite_path, isolation_level=None)
        answers: list[Any] = []
        try:
            async with gw.client(token) as client:
                await client.list_tools()  # the client validates results against these: no request after the call
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        answers.append(await client.call_tool("dynamic__slow", {"seconds": 2}))

                    tg.start_soon(call)
                    await admitted(gw)  # reserved and recorded; the upstream is working
                    locker.execute("BEGIN EXCLUSIVE")  # held until the call has been answered
                [answer] = answers
                assert not answer.is_error and answer.content[0].text == "done"
                [result] = gw.audit("tool.result")
                assert result["outcome"] == "ok" and result["response_tokens"] > 0
                reserved = locker.execute("SELECT tokens FROM sessions WHERE sid = ?", (sid,)).fetchone()[0]
                assert reserved == result["request_tokens"]  # the settlement waits for the lock
                assert gw.gateway.budgets.unsettled == 1
                locker.execute("ROLLBACK")
        finally:
            locker.close()

        async def landed() -> bool:
            session = await gw.gateway.store.get_session(sid)
            return session is not None and session.tokens == result["request_tokens"] + result["response_tokens"]

        await until(landed)
        assert gw.gateway.budgets.unsettled == 0


async def test_a_settlement_whose_reply_a_cut_connection_lost_after_the_commit_counts_once(tmp_path: Path):
    async with database() as direct:
        with cutting_proxy() as proxy:
            dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/{direct.rsplit('/', 1)[1]}"
            async with running_gateway(
                tmp_path, manifests=[dynamic_manifest()], agents=SLOW, extra={"store": dsn}
            ) as gw:
                token = await gw.open_session("bot")
                answers: list[Any] = []
                async with gw.client(token) as client:
                    await client.list_tools()
                    async with anyio.create_task_group() as tg:

                        async def call() -> None:
                            answers.append(await client.call_tool("dynamic__slow", {"seconds": 2}))

                        tg.start_soon(call)
                        call_id = (await admitted(gw)).encode()
                        proxy.cut_reply_to(call_id)  # the settlement commits; its reply never arrives
                [answer] = answers
                assert not answer.is_error and answer.content[0].text == "done"
                assert proxy.cut.is_set()
                # the retry, answered this time
                assert await anyio.to_thread.run_sync(proxy.wait_delivered, call_id, 1, 20)
                [result] = gw.audit("tool.result")
                session = await gw.gateway.store.get_session(await sid_of(gw, token))
                assert session is not None
                assert session.tokens == result["request_tokens"] + result["response_tokens"]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 30)),
        st.tuples(st.just("refuse"), st.integers(0, 50)),  # a reserved call refused after all (released)
        # a settlement keyed by one of a few call ids (a repeat is a retry), possibly while the store is closed
        st.tuples(st.just("settle"), st.integers(1, 40), st.integers(0, 4), st.booleans()),
        st.tuples(st.just("flush"), st.booleans()),  # periodic upkeep, with the store open or closed
    ),
    max_size=30,
)


async def _budgets_agree(root: Path, ops: list[tuple[Any, ...]]) -> None:
    config = write_config(
        root,
        8765,
        manifests=[],
        agents={"bot": {"owner": "o@example.com", "grant": {"tools": ["srv.*"], "budget": {"daily_tokens": 10**6}}}},
    )
    async with audit_running(config) as gateway:
        await gateway.agents.sync(gateway.clock())
        _, token = await gateway.sessions.open("bot", via="test")
        principal = await gateway.sessions.authenticate(token)
        budgets, store = gateway.budgets, gateway.store
        running: list[tuple[int, Any]] = []  # reserved calls not refused: (request tokens, reservation)
        settled: dict[int, int] = {}  # call id -> tokens of its first settlement
        for n, op in enumerate(ops):
            if op[0] == "reserve":
                running.append((op[1], await budgets.reserve(principal, "srv.tool", op[1], f"fp{n}")))
            elif op[0] == "refuse" and running:
                _, reserved = running.pop(op[1] % len(running))
                await budgets.release(reserved, f"c{n}")
            elif op[0] == "settle":
                _, tokens, key, closed = op
                if closed:
                    await store.close()  # the store cannot be reached: the settlement waits
                await budgets.settle(principal, tokens, call_id=f"call-{key}")  # never raises for the store
                settled.setdefault(key, tokens)
                await store.open()
            elif op[0] == "flush":
                if op[1] and budgets.unsettled:
                    await store.close()
                    with pytest.raises(StoreUnavailable):  # still waiting, nothing lost
                        await budgets.flush()
                    await store.open()
                await budgets.flush()
                assert budgets.unsettled == 0
        await budgets.flush()
        session = await store.get_session(principal.sid)
        assert session is not None
        assert session.calls == len(running)
        assert session.tokens == sum(tokens for tokens, _ in running) + sum(settled.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_any_sequence_of_reservations_refusals_and_retried_settlements_counts_each_distinct_call_once(
    tmp_path_factory, ops
):
    anyio.run(_budgets_agree, tmp_path_factory.mktemp("budgets"), ops)
