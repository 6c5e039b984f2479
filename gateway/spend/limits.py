"""The budget rules as plain functions: which limit refused a reservation, and the stop detail it reports.

Each SQL backend checks the limits inside its one atomic reservation statement (that must stay in
SQL, or concurrent calls could overdraw). When the statement grants nothing, the backend reads the
counters and asks `refusal` why, so SQLite and PostgreSQL name the same limit with the same figures;
`Budgets` then turns that answer into the stop the agent is told with `limit_detail` or `rate_detail`.

Imports only store/base.py (the records), so the store backends may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.base import Ask, Reservation, SessionRecord, utc_day


@dataclass(frozen=True)
class Counters:
    """The shared counters besides the session row that a reservation checks."""

    day_tokens: int = 0  # the agent's tokens on the ask's UTC day
    minute_calls: int = 0  # the agent's calls in the ask's clock minute
    tool_calls: int = 0  # this session's calls to the ask's tool (counted only when it has a cap)
    tool_block: dict[str, Any] | None = None  # why the ask's tool is blocked in this session


def session_refusal(session: SessionRecord | None, ask: Ask) -> Reservation | None:
    """The refusal the session row alone explains (it is gone, ended or suspended), if any.

    A backend checks this before it reads the counters `refusal` needs.
    """
    if session is None or session.ended_state(ask.now) is not None:
        return Reservation(session, False, "ended")
    if session.state == "suspended":
        return Reservation(session, False, "suspended")
    return None


def refusal(session: SessionRecord | None, ask: Ask, counters: Counters) -> Reservation:
    """Why `ask` was not granted, from state read after the reservation failed.

    When several limits are reached, the one named is the first of: session calls, session
    tokens, daily tokens (these suspend the session), the tool's cap, the rate limit.
    """
    stopped = session_refusal(session, ask)
    if stopped is not None:
        return stopped
    assert session is not None  # session_refusal answers for a missing session
    if counters.tool_block is not None:
        return Reservation(session, False, "blocked", block=counters.tool_block)
    checks = (
        ("session_calls", session.calls, session.calls_limit, session.calls + ask.calls <= (session.calls_limit or 0)),
        (
            "session_tokens",
            session.tokens,
            session.tokens_limit,
            session.tokens + ask.tokens < (session.tokens_limit or 0),
        ),
        (
            "daily_tokens",
            counters.day_tokens,
            ask.daily_tokens,
            counters.day_tokens + ask.tokens < (ask.daily_tokens or 0),
        ),
        ("tool_calls", counters.tool_calls, ask.tool_cap, counters.tool_calls + ask.calls <= (ask.tool_cap or 0)),
        (
            "calls_per_minute",
            counters.minute_calls,
            ask.calls_per_minute,
            counters.minute_calls + ask.calls <= (ask.calls_per_minute or 0),
        ),
    )
    for name, used, limit, fits in checks:
        if limit is not None and not fits:
            return Reservation(session, False, name, used, limit)
    return Reservation(session, False, "ended")  # nothing else can refuse: it ended in between


def limit_detail(reservation: Reservation, ask: Ask) -> dict[str, Any]:
    """The stop detail of a refusal by a session or tool limit (not the rate limit; not ended,
    suspended or blocked): what was reached, how much of it is used, and what it stops.

    `scope` says what the stop holds for: "tool" (that tool, for the rest of the session) or
    "session" (the session is suspended; a daily limit says when it resets).
    """
    assert reservation.session is not None
    limit = str(reservation.refusal)
    detail: dict[str, Any] = {
        "limit": limit,
        "used": reservation.used,
        "max": reservation.limit,
        "session": reservation.session.sid,
    }
    if limit == "tool_calls":
        detail.update(scope="tool", tool=ask.tool)
        return detail
    detail["scope"] = "session"
    if limit == "daily_tokens":
        detail["resets_at"] = utc_day(ask.now + 86400) + "T00:00:00Z"
    return detail


def rate_detail(sid: str, used: int | None, maximum: int | None, now: float) -> dict[str, Any]:
    """The stop detail of a call refused by `calls_per_minute`: it may retry when the clock minute ends."""
    return {
        "limit": "calls_per_minute",
        "used": used,
        "max": maximum,
        "session": sid,
        "scope": "call",
        "retry_after_s": max(1, 60 - int(now % 60)),
    }
