"""Cancel scopes of the work done for each agent session, so ending the session cuts that work at once.

The edge registers each request it serves; the pipeline registers each forward (a handshake-era handler
runs in the SDK session's task, outside its request's scope, so the edge's scope alone would miss it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio


class SessionScopes:
    def __init__(self) -> None:
        self._live: dict[str, set[anyio.CancelScope]] = {}

    @contextlib.contextmanager
    def open(self, sid: str) -> Iterator[anyio.CancelScope]:
        """A cancel scope that `cancel(sid)` cancels, entered for the block and forgotten after it."""
        scope = anyio.CancelScope()
        self._live.setdefault(sid, set()).add(scope)
        try:
            with scope:
                yield scope
        finally:
            live = self._live.get(sid)
            if live is not None:
                live.discard(scope)
                if not live:
                    del self._live[sid]

    def cancel(self, sid: str) -> None:
        """The session ended: cancel every scope open for it now."""
        for scope in self._live.pop(sid, set()):
            scope.cancel()

    def sids(self) -> set[str]:
        """The sessions with a scope open now."""
        return set(self._live)
