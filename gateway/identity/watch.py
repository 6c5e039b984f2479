"""Session ends this process did not cause (expiry, the CLI, another replica), noticed and acted on.

`SessionWatch.run()` owns two tasks: a sweep every `SWEEP_EVERY` seconds (agent lifecycle, key
rotations, expired sessions, budget upkeep, and a re-check of every session this process holds
something for), and the store's change feed (PostgreSQL pushes ends, key changes and resyncs at
once; the sweep is the safety net).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import anyio

from gateway.errors import Unavailable
from gateway.identity.keys import KeyRing
from gateway.identity.lifecycle import Lifecycle
from gateway.identity.lifecycle import sweep as lifecycle_sweep
from gateway.identity.sessions import Sessions
from gateway.spend.budgets import Budgets
from gateway.store import Store
from gateway.store.base import KEYS_CHANGED, RESYNC, SESSION_ENDED

log = logging.getLogger("gateway.watch")

SWEEP_EVERY = 1.0  # seconds between checks for sessions that ended elsewhere or expired, and key rotations


class SessionWatch:
    def __init__(
        self,
        *,
        store: Store,
        sessions: Sessions,
        keys: KeyRing,
        budgets: Budgets,
        lifecycle: Lifecycle,
        clock: Callable[[], float],
        tracked: Callable[[], set[str]],
        prune: Callable[[], None],
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.keys = keys
        self.budgets = budgets
        self.lifecycle = lifecycle
        self.clock = clock
        self.tracked = tracked  # every agent session this process holds something for (requests, streams, children)
        self.prune = prune  # forget MCP sessions the SDK ended on its own

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sweep)
            tg.start_soon(self.store.watch, self._changed)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _sweep(self) -> None:
        while True:
            await anyio.sleep(SWEEP_EVERY)
            await lifecycle_sweep(self.lifecycle)  # agents expired or idle, credentials near their max age
            try:
                await self.keys.sync()
                await self.sessions.sweep()
                await self.budgets.maintain()
                self.prune()
                await self.recheck()
            except Unavailable as exc:
                log.warning("session watch: %s", exc)

    async def _changed(self, kind: str, key: str) -> None:
        """What another replica or the CLI changed, pushed by the store (PostgreSQL), acted on at once."""
        try:
            if kind == SESSION_ENDED:
                await self.sessions.notify_ended(key)
            elif kind == KEYS_CHANGED:
                await self.keys.sync()
            elif kind == RESYNC:
                await self.keys.sync()
                await self.recheck()
        except Unavailable as exc:
            log.warning("store change %s: %s", kind, exc)

    async def recheck(self) -> None:
        """Release what this process holds for sessions that have ended (streams, MCP sessions, children)."""
        now = self.clock()
        for sid in self.tracked():
            session = await self.store.get_session(sid)
            if session is None or session.ended_state(now) is not None:
                await self.sessions.notify_ended(sid)
