"""The reservation statement against a model of the limits, over random sequences of calls, settlements,
releases (a call refused after its reservation), retried settlements and time."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.base import Ask, SessionRecord, Store, utc_day
from gateway.store.sqlite import SQLiteStore

CALLS, TOKENS, DAILY, PER_MINUTE, CAP = 16, 500, 300, 4, 3
START = 1_800_000_000.0 - 30  # 30 s before a UTC midnight, so runs cross minutes and days

_reserve = st.tuples(st.just("reserve"), st.sampled_from(["srv.capped", "srv.free"]), st.integers(0, 40))
operations = st.lists(
    st.one_of(
        _reserve,
        _reserve,
        _reserve,
        # a settlement keyed by one of a few call ids: a repeated key is a retry and must count once
        st.tuples(st.just("settle"), st.integers(1, 60), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 100)),  # which granted reservation gets refused after all
        st.tuples(
            st.just("deny"),
        ),  # a call denied before any reservation: it counts against the rate limit
        st.tuples(st.just("wait"), st.sampled_from([1, 5, 61])),
    ),
    min_size=10,
    max_size=60,
)


class Model:
    """The limits as plain Python: what the one SQL statement must agree with. `daily` and `per_minute`: whether
    the asks carry those limits (an agent without one keeps no counter for it)."""

    def __init__(self, daily: bool = True, per_minute: bool = True) -> None:
        self.daily, self.per_minute = daily, per_minute
        self.calls = self.tokens = self.capped = 0
        self.days: dict[str, int] = {}
        self.minutes: dict[int, int] = {}

    def reserve(self, tool: str, tokens: int, now: float) -> str | None:
        day, minute = utc_day(now), int(now // 60)
        checks = (
            ("session_calls", self.calls + 1 <= CALLS),
            ("session_tokens", self.tokens + tokens < TOKENS),
            ("daily_tokens", not self.daily or self.days.get(day, 0) + tokens < DAILY),
            ("tool_calls", tool != "srv.capped" or self.capped + 1 <= CAP),
            ("calls_per_minute", not self.per_minute or self.minutes.get(minute, 0) + 1 <= PER_MINUTE),
        )
        for name, fits in checks:
            if not fits:
                return name
        self.calls += 1
        self.tokens += tokens
        self.capped += tool == "srv.capped"
        if self.daily:
            self.days[day] = self.days.get(day, 0) + tokens
        if self.per_minute:
            self.minutes[minute] = self.minutes.get(minute, 0) + 1
        return None

    def settle(self, tokens: int, now: float) -> None:
        self.tokens += tokens
        if self.daily:
            self.days[utc_day(now)] = self.days.get(utc_day(now), 0) + tokens

    def deny(self, now: float) -> int | None:
        minute = int(now // 60)
        used = self.minutes.get(minute, 0)
        if used >= PER_MINUTE:
            return used
        self.minutes[minute] = used + 1
        return None

    def release(self, tool: str, tokens: int, then: float) -> None:
        """Everything the reservation at `then` counted goes back, except its call in the agent's minute."""
        self.calls -= 1
        self.tokens -= tokens
        self.capped -= tool == "srv.capped"
        if self.daily:
            self.days[utc_day(then)] -= tokens


async def _run(path: Path, ops: list[tuple[Any, ...]], daily: bool, per_minute: bool) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        await agrees_with_the_model(store, ops, daily=daily, per_minute=per_minute)
    finally:
        await store.close()


async def agrees_with_the_model(
    store: Store, ops: list[tuple[Any, ...]], *, daily: bool = True, per_minute: bool = True
) -> None:
    """Run `ops` on a fresh store (session "s" of agent "a") and the model side by side; the asks carry the daily
    and per-minute limits as `daily` and `per_minute` say (the tool cap: on calls to srv.capped)."""
    now = START
    await store.create_session(
        SessionRecord(
            sid="s",
            agent="a",
            owner="o@example.com",
            on_behalf_of=None,
            task=None,
            grant_version="g",
            state="active",
            created_at=now,
            expires_at=now + 86400 * 9,
            max_expires_at=now + 86400 * 9,
            idle_timeout=86400 * 9,
            last_seen=now,
            calls_limit=CALLS,
            tokens_limit=TOKENS,
        ),
        None,
    )
    model = Model(daily, per_minute)
    granted: list[Ask] = []  # reservations not released yet
    settled: set[int] = set()
    run = secrets.token_hex(4)  # keys of this run only (a store may be reused across examples)
    for n, op in enumerate(ops):
        if op[0] == "wait":
            now += op[1]
        elif op[0] == "settle":
            _, tokens, key = op
            await store.settle("s", tokens, now, daily, f"{run}-call-{key}")
            if key not in settled:
                settled.add(key)
                model.settle(tokens, now)
        elif op[0] == "deny":
            assert await store.count_attempt("a", now, PER_MINUTE) == model.deny(now)
        elif op[0] == "release":
            if granted:
                ask = granted.pop(op[1] % len(granted))
                for _ in range(2):  # retried: given back once
                    await store.release(ask, f"{run}-release-{n}")
                model.release(str(ask.tool), ask.tokens, ask.now)
        else:
            _, tool, tokens = op
            cap = CAP if tool == "srv.capped" else None
            ask = Ask(
                "s",
                "a",
                now,
                calls=1,
                tokens=tokens,
                tool=tool,
                tool_cap=cap,
                daily_tokens=DAILY if daily else None,
                calls_per_minute=PER_MINUTE if per_minute else None,
            )
            result = await store.reserve(ask)
            expected = model.reserve(tool, tokens, now)
            assert (result.refusal if not result.granted else None) == expected, (op, result)
            if not result.granted:
                assert result.used is not None and result.limit is not None
            else:
                granted.append(ask)
        session = await store.get_session("s")
        assert session is not None
        assert (session.calls, session.tokens) == (model.calls, model.tokens)
        assert session.calls <= CALLS


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, daily=st.booleans(), per_minute=st.booleans())
def test_the_reservation_statement_grants_exactly_what_every_limit_allows(tmp_path_factory, ops, daily, per_minute):
    """Every combination of limits an ask carries (each is its own SQLite statement) against the model."""
    path = tmp_path_factory.mktemp("store") / "gateway.db"
    anyio.run(_run, path, ops, daily, per_minute)
