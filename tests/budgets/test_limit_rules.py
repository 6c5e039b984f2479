"""The budget rules both store backends use to explain a refusal, and the Protocol roles of the store."""

from __future__ import annotations

import inspect

from gateway.spend.limits import Counters, limit_detail, rate_detail, refusal
from gateway.store import base
from gateway.store.base import Ask, SessionRecord
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

NOW = 1_800_000_000.0 - 30  # 2027-01-15T07:59:30Z


def _session(**changes: object) -> SessionRecord:
    session = SessionRecord(
        "s", "a", "o@example.com", None, None, "v1", "active", NOW - 60, NOW + 600, NOW + 3600, 600, NOW - 1
    )
    for name, value in changes.items():
        setattr(session, name, value)
    return session


def _ask() -> Ask:
    return Ask("s", "a", NOW, calls=1, tokens=10, tool="srv.t", tool_cap=3, daily_tokens=100, calls_per_minute=5)


def test_a_refusal_names_the_first_limit_reached_in_a_fixed_order_with_its_figures():
    full = Counters(day_tokens=95, minute_calls=5, tool_calls=3)
    session = _session(calls=4, calls_limit=4, tokens=95, tokens_limit=100)
    order = []
    while True:
        refused = refusal(session, _ask(), full)
        if refused.refusal == "ended":
            break
        order.append((refused.refusal, refused.used, refused.limit))
        # lift the limit just named, and ask again
        if refused.refusal == "session_calls":
            session.calls_limit = None
        elif refused.refusal == "session_tokens":
            session.tokens_limit = None
        elif refused.refusal == "daily_tokens":
            full = Counters(day_tokens=0, minute_calls=5, tool_calls=3)
        elif refused.refusal == "tool_calls":
            full = Counters(minute_calls=5)
        else:
            full = Counters()
    assert order == [
        ("session_calls", 4, 4),
        ("session_tokens", 95, 100),
        ("daily_tokens", 95, 100),
        ("tool_calls", 3, 3),
        ("calls_per_minute", 5, 5),
    ]


def test_a_session_that_is_gone_ended_suspended_or_blocked_is_explained_before_any_limit():
    counters = Counters(day_tokens=1000)
    assert refusal(None, _ask(), counters).refusal == "ended"
    assert refusal(_session(expires_at=NOW), _ask(), counters).refusal == "ended"
    assert refusal(_session(state="suspended"), _ask(), counters).refusal == "suspended"
    block = {"limit": "loop_repeats", "tool": "srv.t"}
    blocked = refusal(_session(), _ask(), Counters(day_tokens=1000, tool_block=block))
    assert (blocked.refusal, blocked.block) == ("blocked", block)


def test_the_stop_detail_says_what_a_limit_stops_and_when_a_daily_one_resets():
    session = _session(tokens=95, tokens_limit=100)
    tokens = limit_detail(refusal(session, _ask(), Counters()), _ask())
    assert tokens == {"limit": "session_tokens", "used": 95, "max": 100, "session": "s", "scope": "session"}
    daily = limit_detail(refusal(_session(), _ask(), Counters(day_tokens=95)), _ask())
    assert daily["scope"] == "session" and daily["resets_at"] == "2027-01-16T00:00:00Z"
    tool = limit_detail(refusal(_session(), _ask(), Counters(tool_calls=3)), _ask())
    assert (tool["scope"], tool["tool"]) == ("tool", "srv.t")
    assert rate_detail("s", 5, 5, NOW)["retry_after_s"] == 30


def test_the_store_is_exactly_its_roles_and_each_backend_has_every_method():
    roles = [
        base.StoreConnection,
        base.AgentStore,
        base.SessionStore,
        base.BudgetStore,
        base.ReplayStore,
        base.LoginStore,
        base.CheckpointStore,
    ]
    methods = [_methods(role) for role in roles]
    union = set().union(*methods)
    assert sum(len(m) for m in methods) == len(union)  # each method belongs to one role
    assert _methods(base.Store) == union
    for backend in (SQLiteStore, PostgresStore):
        assert union <= _methods(backend)


def _methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}
