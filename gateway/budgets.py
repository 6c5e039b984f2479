"""Budget reservation and settlement around each forwarded call.

The reservation is the per-call session check: one atomic store statement
checks the session is live and active and within its limits, and counts the
call. A stop suspends the session: its token still authenticates, and every
further call gets the same stop until an operator resumes it or it is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.audit import Audit
from gateway.errors import AuthError, Stopped
from gateway.principal import Principal
from gateway.store.base import Reservation, SessionRecord, Store

_LIMIT_WORDS = {
    "session_calls": "the session's tool-call budget",
    "session_tokens": "the session's token budget",
}


def stop_for(limit: str, used: int | None, maximum: int | None, session: SessionRecord) -> Stopped:
    what = _LIMIT_WORDS.get(limit, limit)
    usage = f" ({used}/{maximum})" if used is not None and maximum is not None else ""
    message = (
        f"STOP: {what} is exhausted{usage}. Do not call more tools in this session; report to the user "
        f"that the task hit its budget. An operator can resume session {session.sid}."
    )
    detail = {"limit": limit, "used": used, "max": maximum, "session": session.sid}
    return Stopped(limit, message, detail)


class Budgets:
    def __init__(self, store: Store, audit: Audit, clock: Callable[[], float]) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock

    async def reserve(self, principal: Principal, request_tokens: int) -> SessionRecord:
        """Count one call against the session, or stop it.

        Raises:
            Stopped: a limit is reached, or the session is already suspended.
            AuthError: the session ended since the request was authenticated.
            StoreUnavailable: the store cannot be consulted.
        """
        now = self.clock()
        reservation = await self.store.reserve(principal.sid, now, 1, request_tokens)
        if reservation.granted and reservation.session is not None:
            return reservation.session
        await self._refuse(principal, reservation, now)
        raise AssertionError("unreachable")

    async def _refuse(self, principal: Principal, reservation: Reservation, now: float) -> None:
        session = reservation.session
        if session is None or reservation.refusal == "ended":
            raise AuthError("session ended")
        if reservation.refusal == "suspended":
            stop = session.stop or {"limit": session.reason or "suspended"}
            raise stop_for(str(stop.get("limit")), stop.get("used"), stop.get("max"), session)
        limit = reservation.refusal or "session_calls"
        used, maximum = (
            (session.calls, session.calls_limit) if limit == "session_calls" else (session.tokens, session.tokens_limit)
        )
        stop = stop_for(limit, used, maximum, session)
        if await self.store.suspend_session(session.sid, stop.detail, now):
            await self.audit.emit(
                "budget.exceeded", durable=True, **principal.audit_fields(), reason=limit,
                used=used, limit=maximum,
            )
        raise stop

    async def check(self, principal: Principal) -> None:
        """For requests that are not tool calls: refuse while the session is stopped or out of tokens.

        Raises:
            Stopped, AuthError, StoreUnavailable: as for `reserve`.
        """
        now = self.clock()
        reservation = await self.store.reserve(principal.sid, now, 0, 0)
        if not reservation.granted:
            await self._refuse(principal, reservation, now)

    async def settle(self, principal: Principal, tokens: int) -> None:
        await self.store.settle(principal.sid, tokens)


def stop_detail(stop: Stopped) -> dict[str, Any]:
    return {"gateway/stop": stop.detail}
