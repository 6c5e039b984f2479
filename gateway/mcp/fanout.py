"""Change notifications and resource subscriptions, delivered only to whom they concern.

Upstream list changes reach every connected client of a view that includes the
server (handshake-era clients on their standalone stream, 2026-07-28 clients on
their `subscriptions/listen` streams). Resource subscriptions are refcounted per
upstream connection: the first subscriber subscribes upstream, the last one
unsubscribes, and an update reaches exactly the subscribers of that URI on that
connection, so callers never see each other's subscriptions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server.session import ServerSession
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_matches,
    event_to_notification,
)

from gateway.identity.principal import Principal
from gateway.mcp.views import View
from gateway.upstream import Connection, Upstream

log = logging.getLogger("gateway.fanout")

_EVENTS: dict[str, ServerEvent] = {
    "tools": ToolsListChanged(),
    "prompts": PromptsListChanged(),
    "resources": ResourcesListChanged(),
}
_BACKLOG = 256


@dataclass(eq=False)
class Listener:
    """A client that can be told about changes: a handshake-era MCP session or a listen stream."""

    sid: str
    view: View
    session: ServerSession | None = None  # handshake era: the standalone stream
    honored: types.SubscriptionFilter | None = None  # 2026-07-28: the listen stream's filter
    uris: frozenset[str] = frozenset()
    queue: Any = None  # MemoryObjectSendStream[ServerEvent] for listen streams

    def sees(self, server: str) -> bool:
        return self.view.server is None or self.view.server == server

    async def deliver(self, event: ServerEvent) -> bool:
        """Send one event; False when this listener is gone."""
        if self.queue is not None:
            if self.honored is None or not event_matches(self.honored, self.uris, event):
                return True
            try:
                self.queue.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("listen stream of session %s is not reading; ending it", self.sid)
                self.queue.close()
                return False
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return False
            return True
        assert self.session is not None
        try:
            await self.session.send_notification(event_to_notification(event, {}))
        except Exception:  # a vanished client surfaces as any transport error; forget it
            return False
        return True


@dataclass
class _Subscription:
    upstream: Upstream
    connection: Connection
    uri: str
    listeners: dict[Listener, str] = field(default_factory=dict)  # listener -> the URI it knows


class Fanout:
    def __init__(self) -> None:
        self._sessions: dict[str, Listener] = {}  # Mcp-Session-Id -> handshake-era listener
        self._streams: set[Listener] = set()
        self._subs: dict[tuple[int, str], _Subscription] = {}
        self._lock = anyio.Lock()

    # ------------------------------------------------------------ listeners

    def remember(self, mcp_session: str, listener: Listener) -> None:
        self._sessions.setdefault(mcp_session, listener)

    def session_listener(self, mcp_session: str) -> Listener | None:
        return self._sessions.get(mcp_session)

    def forget_mcp_session(self, mcp_session: str) -> None:
        listener = self._sessions.pop(mcp_session, None)
        if listener is not None:
            self._drop(listener)

    def add_stream(self, listener: Listener) -> None:
        self._streams.add(listener)

    def _listeners(self) -> list[Listener]:
        return [*self._sessions.values(), *self._streams]

    def _drop(self, listener: Listener) -> None:
        self._streams.discard(listener)
        for key, sub in list(self._subs.items()):
            if sub.listeners.pop(listener, None) is not None and not sub.listeners:
                self._subs.pop(key, None)
                sub.upstream.hub.spawn(_unsubscribe_upstream, sub)

    def remove_stream(self, listener: Listener) -> None:
        self._drop(listener)

    def session_sids(self) -> set[str]:
        """Every agent session with a listener here (its end must be noticed to drop them)."""
        return {listener.sid for listener in self._listeners()}

    def drop_session(self, sid: str) -> None:
        """The agent session ended: forget everything of it."""
        for key, listener in list(self._sessions.items()):
            if listener.sid == sid:
                del self._sessions[key]
                self._drop(listener)
        for listener in [s for s in self._streams if s.sid == sid]:
            self._drop(listener)

    # ------------------------------------------------------------ events from upstreams

    async def changed(self, server: str, kind: str) -> None:
        event = _EVENTS[kind]
        for listener in self._listeners():
            if listener.sees(server) and not await listener.deliver(event):
                self._forget(listener)

    async def updated(self, connection: Connection, uri: str) -> None:
        sub = self._subs.get((id(connection), uri))
        if sub is None:
            return
        for listener, known_as in list(sub.listeners.items()):
            if not await listener.deliver(ResourceUpdated(uri=known_as)):
                self._forget(listener)

    async def log(self, sid: str, params: types.LoggingMessageNotificationParams) -> None:
        """A per-session server's log line with no call in flight: to that session's handshake-era streams."""
        for listener in [x for x in self._sessions.values() if x.sid == sid]:
            assert listener.session is not None
            try:
                await listener.session.send_notification(types.LoggingMessageNotification(params=params))
            except Exception:  # a vanished client surfaces as any transport error; forget it
                self._forget(listener)

    def _forget(self, listener: Listener) -> None:
        for key, known in list(self._sessions.items()):
            if known is listener:
                del self._sessions[key]
        self._drop(listener)

    # ------------------------------------------------------------ subscriptions

    def held_upstream(self) -> set[tuple[str, str]]:
        """(server, uri) of every resource subscription the gateway holds upstream."""
        return {(sub.upstream.name, sub.uri) for sub in self._subs.values()}

    async def subscribe(
        self, listener: Listener, principal: Principal, upstream: Upstream, uri: str, known_as: str
    ) -> None:
        """Subscribe `listener` (of `principal`'s request) to an upstream resource (refcounted per connection).

        Raises:
            UpstreamError, MCPError: the upstream could not be reached or refused.
        """
        connection = upstream.connection_for(principal)
        key = (id(connection), uri)
        async with self._lock:
            sub = self._subs.get(key)
            if sub is None:
                await upstream.subscribe(connection, uri, True)
                sub = self._subs[key] = _Subscription(upstream, connection, uri)
            sub.listeners[listener] = known_as

    async def unsubscribe(self, listener: Listener, upstream: Upstream, uri: str) -> None:
        async with self._lock:  # found by its listener: looking the connection up could start a new one
            found = next(
                (
                    (key, sub)
                    for key, sub in self._subs.items()
                    if sub.upstream is upstream and sub.uri == uri and listener in sub.listeners
                ),
                None,
            )
            if found is None:
                return
            key, sub = found
            del sub.listeners[listener]
            if not sub.listeners:
                del self._subs[key]
                await _unsubscribe_upstream(sub)


async def _unsubscribe_upstream(sub: _Subscription) -> None:
    try:
        await sub.upstream.subscribe(sub.connection, sub.uri, False)
    except Exception as exc:  # background task boundary: best effort, the upstream may be gone
        log.info("unsubscribing %s from %s failed: %s", sub.uri, sub.upstream.name, exc)


def listen_meta(request_id: Any) -> dict[str, Any]:
    return {SUBSCRIPTION_ID_META_KEY: request_id}
