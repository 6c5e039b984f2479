"""Budgets: reserve before forwarding, settle after, and stop runaway work.

`reserve` is the per-call check: one atomic store statement checks the session
is live and active, that no limit is passed, and counts the call and its
argument tokens. `settle` adds what came back. Limits come from the agent's
current grant at every call, so a grant change reaches live sessions at their
next call (operator additions from `sessions resume` last until then).

What each stop does:

| limit | scope | effect |
|---|---|---|
| session_calls, session_tokens, daily_tokens | the session | suspended until `sessions resume` or close |
| loop_repeats, tool_calls | one tool in the session | that tool is refused for the rest of the session |
| calls_per_minute | one call | refused with `retry_after_s`; nothing is suspended |

The first two kinds write `budget.exceeded` once, when they happen; every
refused call is recorded as a denied `tool.call`. A token budget can be overshot
only by what comes back from work admitted before it ran out: a call is admitted
only while its arguments fit with room to spare, and its result, the sampling it
triggers, and model usage the runtime reports are counted when they arrive.
`budget.threshold` fires once per session (per agent and UTC day for
daily_tokens) at each of the grant's alert shares.

Exact accounting: a call refused after its reservation (its durable
`tool.call` or the store failed) gets the reservation back (`release`), so a
budget counts only calls that ran. A settlement is applied once per call id
however often it is retried, and it never fails the call it accounts for: when
the store cannot take it (SQLite "database is locked", PostgreSQL away) it waits
in memory and is written, oldest first, before this process's next reservation
and at every periodic upkeep. The rate limit (`calls_per_minute`) counts every
attempt: denied calls (not granted, unknown, argument rule) and refused ones too.

Denials are audited in full up to `audit.denials_per_minute` per agent and clock
minute; past that they are counted and written as one `denials.aggregated`
record per session when the minute ends, so a flood of denied calls costs a
bounded audit volume.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.errors import AuthError, Stopped, StoreUnavailable, Unavailable
from gateway.identity.principal import Principal
from gateway.spend import limits
from gateway.store.base import Ask, BudgetStore, Reservation, Settled, clock_minute, utc_day

log = logging.getLogger("gateway.budgets")

SESSION_LIMITS = ("session_calls", "session_tokens", "daily_tokens")
STOP_REASONS = frozenset({*SESSION_LIMITS, "tool_calls", "loop_repeats", "calls_per_minute", "suspended", "blocked"})

_WHAT = {
    "session_calls": "this session's tool-call budget",
    "session_tokens": "this session's token budget",
    "daily_tokens": "this agent's daily token budget (it resets at 00:00 UTC)",
}


def stop_for(detail: dict[str, Any]) -> Stopped:
    """The stop an agent is told, in plain words, from its structured detail."""
    limit = str(detail.get("limit"))
    used, maximum, sid, tool = detail.get("used"), detail.get("max"), detail.get("session"), detail.get("tool")
    usage = f" ({used}/{maximum})" if used is not None and maximum is not None else ""
    if limit == "calls_per_minute":
        message = (
            f"RATE LIMITED: this agent may make {maximum} tool calls a minute and has made {used} this minute. "
            f"Nothing was forwarded. Wait {detail.get('retry_after_s')} seconds before calling again."
        )
    elif limit == "loop_repeats":
        message = (
            f"STOP calling {tool}: it was called with the same arguments {used} times within "
            f"{detail.get('window_s')}s (the grant allows {maximum}), which looks like a loop. Calls to {tool} are "
            f"refused for the rest of this session; do not retry it. Change approach or report to the user. "
            f"An operator can lift this with: mcp-gateway sessions resume {sid}"
        )
    elif limit == "tool_calls":
        message = (
            f"STOP calling {tool}: this session has used its calls to it{usage}. Calls to {tool} are refused "
            "for the rest of this session; continue without it or report to the user."
        )
    else:
        message = (
            f"STOP: {_WHAT.get(limit, limit)} is exhausted{usage}. Do not call more tools in this session; "
            f"report to the user that the task hit its budget. An operator can resume it with: "
            f"mcp-gateway sessions resume {sid} --add-tokens N --add-calls N"
        )
    return Stopped(limit, message, detail)


class Loops:
    """Recent identical calls per session, in memory; a loop that trips is recorded in the store."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[tuple[str, str], deque[float]]] = {}

    def repeats(self, sid: str, tool: str, fingerprint: str, now: float, window: float) -> int:
        recent = self._calls.get(sid, {}).get((tool, fingerprint))
        if not recent:
            return 0
        while recent and recent[0] <= now - window:
            recent.popleft()
        return len(recent)

    def record(self, sid: str, tool: str, fingerprint: str, now: float, keep: int) -> None:
        recent = self._calls.setdefault(sid, {}).setdefault((tool, fingerprint), deque(maxlen=keep))
        recent.append(now)

    def unrecord(self, sid: str, tool: str, fingerprint: str, at: float) -> None:
        """Take back a call recorded at `at` (it was refused after all)."""
        recent = self._calls.get(sid, {}).get((tool, fingerprint))
        if recent is not None and at in recent:
            recent.remove(at)

    def forget(self, sid: str, tool: str | None = None) -> None:
        if tool is None:
            self._calls.pop(sid, None)
            return
        calls = self._calls.get(sid, {})
        for key in [k for k in calls if k[0] == tool]:
            del calls[key]


@dataclass(frozen=True)
class Reserved:
    """A granted reservation: what `release` gives back if the call is refused after all."""

    ask: Ask
    fingerprint: str
    looped: bool  # recorded for loop detection


@dataclass(frozen=True)
class _Pending:
    """A settlement or release the store could not take yet."""

    sid: str
    tokens: int
    now: float
    daily: bool
    release: Ask | None = None


@dataclass
class _Aggregate:
    """Denials past the full-record share in one minute, for one session."""

    fields: dict[str, Any]
    reasons: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)


DENIAL_FIELDS = (
    "agent",
    "owner",
    "cost_center",
    "on_behalf_of",
    "session",
    "task",
    "grant",
    "remote_addr",
    "credential",
    "dpop_jkt",
)


class Budgets:
    def __init__(
        self, store: BudgetStore, audit: Audit, clock: Callable[[], float], *, denials_per_minute: int = 60
    ) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        self.loops = Loops()
        self.denials_per_minute = denials_per_minute
        self._alerted: set[tuple[str, str, float]] = set()  # alerts known to have fired (the store is the record)
        self._pruned = 0.0
        self._pending: dict[str, _Pending] = {}  # key -> what the store could not take yet, oldest first
        self._denial_minute = 0
        self._denials: Counter[str] = Counter()  # agent -> denials recorded in full this minute
        self._aggregates: dict[str, _Aggregate] = {}  # session -> denials counted past the full share

    async def reserve(self, principal: Principal, tool: str, request_tokens: int, fingerprint: str) -> Reserved:
        """Count one call to `tool` (`server.tool`) against every limit, or stop it.

        Returns the reservation, for `release` if the call is refused after all.

        Raises:
            Stopped: a limit is reached, the tool is blocked, or the session is suspended.
            AuthError: the session ended since the request was authenticated.
            StoreUnavailable, AuditUnavailable: the limits cannot be checked or the stop recorded.
        """
        budget = principal.grant.budget
        await self.flush()  # what waited for the store counts before anything new is admitted
        now = self.clock()
        await self._apply_grant(principal)
        if budget.loop_repeats is not None:
            repeats = self.loops.repeats(principal.sid, tool, fingerprint, now, budget.loop_window)
            if repeats >= budget.loop_repeats:
                await self._loop(principal, tool, repeats + 1)
        ask = Ask(
            principal.sid,
            principal.agent.id,
            now,
            calls=1,
            tokens=request_tokens,
            tool=tool,
            tool_cap=budget.tool_calls.get(tool),
            daily_tokens=budget.daily_tokens,
            calls_per_minute=budget.calls_per_minute,
        )
        reservation = await self.store.reserve(ask)
        if not reservation.granted or reservation.session is None:
            raise await self._refusal(principal, reservation, ask)
        looped = budget.loop_repeats is not None
        if looped:
            self.loops.record(principal.sid, tool, fingerprint, now, budget.loop_repeats or 0)
        reserved = Reserved(ask, fingerprint, looped)
        session = reservation.session
        try:
            await self._alerts(principal, "session_calls", session.calls, session.calls_limit, session.sid)
            await self._alerts(principal, "session_tokens", session.tokens, session.tokens_limit, session.sid)
        except Unavailable:
            await self.release(reserved, secrets.token_hex(8))
            raise
        return reserved

    async def release(self, reserved: Reserved, call_id: str) -> None:
        """Give back a reservation whose call was refused after it was counted (it never ran).

        Never raises for the store: a release it cannot take now waits and is retried like a settlement.
        """
        ask = reserved.ask
        if reserved.looped and ask.tool is not None:
            self.loops.unrecord(ask.sid, ask.tool, reserved.fingerprint, ask.now)
        await self._apply(f"release:{call_id}", _Pending(ask.sid, ask.tokens, ask.now, False, release=ask))

    async def count_denial(self, principal: Principal) -> Stopped | None:
        """A call denied before any reservation (not granted, unknown, argument rule) counts against the rate limit.

        Returns the rate-limit stop to answer instead when the agent is past `calls_per_minute`.

        Raises:
            StoreUnavailable: the rate cannot be checked.
        """
        limit = principal.grant.budget.calls_per_minute
        if limit is None:
            return None
        now = self.clock()
        used = await self.store.count_attempt(principal.agent.id, now, limit)
        if used is None:
            return None
        return stop_for(limits.rate_detail(principal.sid, used, limit, now))

    async def record_denial(self, event: Event, fields: dict[str, Any]) -> None:
        """Audit a denied request: durably while the agent is within `denials_per_minute`, else counted.

        Counted denials become one `denials.aggregated` record per session when the minute ends.

        Raises:
            AuditUnavailable: a denial to be recorded in full cannot be written.
        """
        await self.flush_denials()
        agent = str(fields.get("agent"))
        if self._denials[agent] < self.denials_per_minute:
            self._denials[agent] += 1
            await self.audit.emit(event, durable=True, **fields)
            return
        session = str(fields.get("session"))
        aggregate = self._aggregates.get(session)
        if aggregate is None:
            aggregate = self._aggregates[session] = _Aggregate({k: fields.get(k) for k in DENIAL_FIELDS})
        aggregate.reasons[str(fields.get("reason"))] += 1
        aggregate.events[event] += 1

    async def flush_denials(self, *, now: bool = False) -> None:
        """Once the minute has ended (or `now`, at shutdown): write its counted denials and count afresh."""
        minute = clock_minute(self.clock())
        if minute == self._denial_minute and not now:
            return
        ended, self._denial_minute = self._denial_minute, minute
        aggregates, self._aggregates = self._aggregates, {}
        self._denials.clear()
        for aggregate in aggregates.values():
            await self.audit.emit(
                Event.DENIALS_AGGREGATED,
                **aggregate.fields,
                count=sum(aggregate.reasons.values()),
                reasons=dict(aggregate.reasons),
                events=dict(aggregate.events),
                window_s=60,
                window_start=ended * 60,
            )

    async def check(self, principal: Principal) -> None:
        """For requests that are not tool calls: refuse while the session is stopped or out of tokens.

        Raises:
            Stopped, AuthError, StoreUnavailable: as for `reserve`.
        """
        await self.flush()
        await self._apply_grant(principal)
        ask = Ask(principal.sid, principal.agent.id, self.clock(), daily_tokens=principal.grant.budget.daily_tokens)
        reservation = await self.store.reserve(ask)
        if not reservation.granted:
            raise await self._refusal(principal, reservation, ask)

    async def settle(self, principal: Principal, tokens: int, call_id: str | None = None) -> None:
        """Add tokens that crossed after admission (results, sampling, reads, model usage).

        Applied once per `call_id` (a fresh key without one). Never raises for the store: the
        call it accounts for has happened, so a settlement the store cannot take now waits in
        memory and is retried (see the module docstring) until it lands.
        """
        if tokens <= 0:
            return
        now = self.clock()
        daily = principal.grant.budget.daily_tokens
        settled = await self._apply(
            call_id or secrets.token_hex(8), _Pending(principal.sid, tokens, now, daily is not None)
        )
        if settled is None:
            return
        try:
            await self._alerts(principal, "session_tokens", settled.tokens, settled.tokens_limit, principal.sid)
            if settled.day_tokens is not None:
                await self._alerts(
                    principal, "daily_tokens", settled.day_tokens, daily, f"{principal.agent.id}@{utc_day(now)}"
                )
        except StoreUnavailable as exc:  # the tokens are counted; a missed alert is not worth failing the call
            log.warning("threshold alerts not checked: %s", exc)

    async def flush(self, want: str | None = None) -> Settled | None:
        """Write what waited for the store, oldest first; returns the totals after the settlement `want`.

        Raises:
            StoreUnavailable: the store still cannot take it (what is left keeps waiting, in order).
        """
        if not self._pending:  # the usual case, on every reservation and check
            return None
        totals = None
        for key in list(self._pending):
            pending = self._pending.pop(key, None)
            if pending is None:  # written meanwhile by another task
                continue
            try:
                written = await self._write(key, pending)
            except StoreUnavailable:
                self._pending = {key: pending, **self._pending}
                raise
            if key == want:
                totals = written
        return totals

    async def close(self) -> None:
        """At shutdown: write the counted denials, and what waits for the store if it can take it now."""
        await self.flush_denials(now=True)
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.error("%d settlement(s) could not be written before shutdown: %s", len(self._pending), exc)

    @property
    def unsettled(self) -> int:
        """How many settlements and releases wait for the store."""
        return len(self._pending)

    def forget(self, sid: str) -> None:
        """The session ended: drop what is kept in memory for it."""
        self.loops.forget(sid)

    async def maintain(self) -> None:
        """Periodic upkeep: retry what waited for the store, write the counted denials of a minute
        that ended, and drop counters nothing can consult any more (at most once a minute).

        Raises:
            StoreUnavailable: the store cannot take what waits (it keeps waiting).
        """
        await self.flush_denials()
        await self.flush()
        now = self.clock()
        if now - self._pruned >= 60:
            self._pruned = now
            await self.store.prune_usage(now)
            self._alerted.clear()

    # ------------------------------------------------------------ internals

    async def _apply(self, key: str, pending: _Pending) -> Settled | None:
        """Write a settlement or release after what waits already; keep it waiting if the store cannot take it.

        A key already waiting is a retry of it: the first one stands, as it would in the store.
        """
        self._pending.setdefault(key, pending)
        try:
            return await self.flush(want=key)
        except StoreUnavailable as exc:
            log.warning("%s waits for the store: %s", "a release" if pending.release else "a settlement", exc)
            return None

    async def _write(self, key: str, pending: _Pending) -> Settled | None:
        if pending.release is not None:
            await self.store.release(pending.release, key)
            return None
        return await self.store.settle(pending.sid, pending.tokens, pending.now, pending.daily, key)

    async def _apply_grant(self, principal: Principal) -> None:
        grant = principal.grant
        if principal.session.grant_version != grant.version:
            await self.store.regrant(
                principal.sid, grant.version, grant.budget.session_calls, grant.budget.session_tokens
            )

    async def _refusal(self, principal: Principal, reservation: Reservation, ask: Ask) -> Stopped:
        """The stop for a refused reservation, after recording what it stops (a tool block or a suspension)."""
        session = reservation.session
        if session is None or reservation.refusal == "ended":
            raise AuthError("session ended")
        if reservation.refusal == "suspended":
            return stop_for(session.stop or {"limit": session.reason or "suspended", "session": session.sid})
        if reservation.refusal == "blocked":
            return stop_for(reservation.block or {"limit": "blocked", "session": session.sid, "tool": ask.tool})
        if reservation.refusal == "calls_per_minute":
            return stop_for(limits.rate_detail(session.sid, reservation.used, reservation.limit, ask.now))
        detail = limits.limit_detail(reservation, ask)
        if detail["scope"] == "tool":
            await self._block(principal, str(ask.tool), detail)
            return stop_for(detail)
        limit, used, maximum = detail["limit"], detail["used"], detail["max"]
        if await self.store.suspend_session(session.sid, detail):
            await self.audit.emit(
                Event.BUDGET_EXCEEDED,
                durable=True,
                **principal.audit_fields(),
                reason=limit,
                used=used,
                limit=maximum,
                scope="session",
            )
        if maximum is not None:  # an exhausted limit has reached every alert share
            scope = f"{principal.agent.id}@{ask.day}" if limit == "daily_tokens" else session.sid
            await self._alerts(principal, limit, maximum, maximum, scope)
        return stop_for(detail)

    async def _loop(self, principal: Principal, tool: str, repeats: int) -> None:
        budget = principal.grant.budget
        detail = {
            "limit": "loop_repeats",
            "used": repeats,
            "max": budget.loop_repeats,
            "session": principal.sid,
            "scope": "tool",
            "tool": tool,
            "window_s": budget.loop_window,
        }
        await self._block(principal, tool, detail)
        self.loops.forget(principal.sid, tool)
        raise stop_for(detail)

    async def _block(self, principal: Principal, tool: str, detail: dict[str, Any]) -> None:
        if await self.store.block_tool(principal.sid, tool, detail):
            server, _, name = tool.partition(".")
            await self.audit.emit(
                Event.BUDGET_EXCEEDED,
                durable=True,
                **principal.audit_fields(),
                reason=detail["limit"],
                used=detail["used"],
                limit=detail["max"],
                scope="tool",
                server=server,
                tool=name,
            )

    async def _alerts(self, principal: Principal, limit: str, used: int, maximum: int | None, scope: str) -> None:
        """`budget.threshold` at each alert share `used` has reached, once per scope."""
        if maximum is None:
            return
        for share in principal.grant.alerts:  # ascending
            if used < share * maximum:
                return
            key = (scope, limit, share)
            if key in self._alerted:
                continue
            if await self.store.first_alert(scope, limit, share):
                await self.audit.emit(
                    Event.BUDGET_THRESHOLD,
                    **principal.audit_fields(),
                    reason=limit,
                    share=share,
                    used=used,
                    limit=maximum,
                )
            self._alerted.add(key)
