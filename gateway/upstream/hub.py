"""All upstream servers: their connections, catalogs and change notifications.

`Upstreams.run()` owns every connection task for the app's lifetime; shutdown
cancels them, which closes each client and reaps each stdio child.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
import pydantic
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.tasks import OwnedTasks
from gateway.upstream.caller import CALLER, Caller
from gateway.upstream.connection import Connection, Downstream
from gateway.upstream.manifests import UpstreamSpec

if TYPE_CHECKING:
    from gateway.identity.principal import Principal

log = logging.getLogger("gateway.upstream")

T = TypeVar("T")
CONNECT_WAIT = 10.0  # longest a call waits for a (re)connecting upstream
_PAGE_CAP = 100
STOP_WAIT = 10.0  # longest `Upstream.stop` waits for its connections to close

ChangeListener = Callable[[str, str], Awaitable[None]]  # (server, "tools" | "resources" | "prompts")
UpdateListener = Callable[[Connection, str], Awaitable[None]]  # (connection, upstream resource uri)
LogListener = Callable[[str, types.LoggingMessageNotificationParams], Awaitable[None]]  # (sid, params)
Quarantine = Callable[["Upstream", "Catalog"], Awaitable[frozenset[str]]]  # the tools of a new catalog to hide


async def _nothing_hidden(upstream: Upstream, catalog: Catalog) -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True)
class Catalog:
    """What one server offers, as last listed (tools already narrowed by its manifest)."""

    tools: Mapping[str, types.Tool] = field(default_factory=dict)
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    prompts: Mapping[str, types.Prompt] = field(default_factory=dict)
    all_tools: Mapping[str, types.Tool] = field(default_factory=dict)  # before the manifest's filter


class Upstream:
    """One upstream server."""

    def __init__(self, spec: UpstreamSpec, hub: Upstreams) -> None:
        self.spec = spec
        self.name = spec.name
        self.hub = hub
        self.catalog = Catalog()
        self.main = self._connection(None)
        self._per_session: dict[str, Connection] = {}
        self._refresh_lock = anyio.Lock()
        self.hidden: frozenset[str] = frozenset()  # quarantined tools (pin mismatch)
        self._inflight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self.stopped = False  # removed by hot reload: no new connection is ever started for it

    def _connection(self, sid: str | None, caller: Caller | None = None) -> Connection:
        return Connection(
            self.spec,
            on_notification=self._notification,
            on_connected=self._connected,
            owner_sid=sid,
            stderr_dir=self.hub.stderr_dir,
            caller=caller,
        )

    @property
    def up(self) -> bool:
        return self.main.up

    async def liveness(self, timeout: float) -> str:
        """`up`, `down`, or `unresponsive`: connected, but no answer to a ping within `timeout` (a hung or
        stopped process still holds its pipes open, so only a round trip tells)."""
        if not self.main.up:
            return "down"
        try:
            with anyio.fail_after(timeout):
                await (await self.main.session(timeout)).send_ping()
        except TimeoutError:
            return "unresponsive"
        except UpstreamError:
            return "down"
        except MCPError as exc:  # an error answer is an answer (2026-07-28 servers may not serve ping)
            return "down" if exc.code == types.CONNECTION_CLOSED else "up"
        return "up"

    def tools(self) -> Mapping[str, types.Tool]:
        """The tools this server exposes now: listed, allowed by its manifest, not quarantined."""
        if not self.hidden:
            return self.catalog.tools
        return {name: tool for name, tool in self.catalog.tools.items() if name not in self.hidden}

    def connection_for(self, principal: Principal) -> Connection:
        """Shared: the one connection. Per-session: this session's own, started on its first granted use.

        A per-session connection starts a child process (or an HTTP session) for one agent session, so only
        a session whose grant reaches this server can cause one.

        Raises:
            UpstreamError: the session's grant gives it nothing on this server, or the server was removed or
                replaced by a reload.
        """
        if self.stopped:
            raise UpstreamError(f"upstream server {self.name!r} was removed or restarted by a configuration reload")
        if self.spec.isolation == "shared":
            return self.main
        connection = self._per_session.get(principal.sid)
        if connection is None:
            if not principal.grant.reaches(self.name, self.tools()):
                raise UpstreamError(f"session {principal.sid} has no grant on upstream server {self.name!r}")
            connection = self._per_session[principal.sid] = self._connection(principal.sid, CALLER.get())
            self.hub.spawn(connection.run)
        return connection

    def session_sids(self) -> set[str]:
        """The agent sessions that own a per-session connection of this server now."""
        return set(self._per_session)

    def release(self, sid: str) -> None:
        """The session ended: close its own connection, if any."""
        connection = self._per_session.pop(sid, None)
        if connection is not None:
            connection.close()

    async def request(
        self,
        principal: Principal,
        fn: Callable[[ClientSession], Awaitable[T]],
        downstream: Downstream | None = None,
    ) -> T:
        """Run one request on the right connection with the server's timeout.

        Raises:
            UpstreamError: unavailable, crashed mid-request (connection closed), or not granted (see
                `connection_for`).
            UpstreamTimeout: no answer within the timeout.
            MCPError: the server answered with a JSON-RPC error (passed through).
        """
        return await self._on(self.connection_for(principal), fn, downstream)

    async def _on(
        self,
        connection: Connection,
        fn: Callable[[ClientSession], Awaitable[T]],
        downstream: Downstream | None = None,
    ) -> T:
        self._inflight += 1
        self._idle = anyio.Event() if self._inflight == 1 else self._idle
        try:
            session = await connection.session(min(self.spec.timeout, CONNECT_WAIT))
            routed = connection.routed(downstream) if downstream is not None else contextlib.nullcontext()
            try:
                with routed, anyio.fail_after(self.spec.timeout):
                    return await fn(session)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"upstream server {self.name!r} did not answer within {self.spec.timeout:g}s",
                    seconds=self.spec.timeout,
                ) from None
            except MCPError as exc:
                if exc.code == types.CONNECTION_CLOSED:
                    connection.lost()
                    raise UpstreamError(
                        f"upstream server {self.name!r} closed the connection (it will be restarted)"
                    ) from exc
                if exc.code == types.PARSE_ERROR:  # the SDK's word for a body it could not parse: not the caller's
                    raise UpstreamError(f"upstream server {self.name!r} sent a malformed response: {exc}") from exc
                raise
            except pydantic.ValidationError as exc:  # an answer that breaks the protocol is the upstream's fault
                raise UpstreamError(
                    f"upstream server {self.name!r} sent an invalid result: {exc.error_count()} error(s), "
                    f"first: {exc.errors()[0]['msg'] if exc.errors() else 'unknown'}"
                ) from None
        except UpstreamError as exc:  # the detail is the operator's: the agent is told only exc.for_agent()
            log.warning("upstream %s: request failed: %s", self.name, exc)
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> int:
        """Wait (up to `timeout`) for the requests in flight to finish; returns how many were still running."""
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        return self._inflight

    async def stop(self) -> None:
        """Close every connection of this server and wait until each is down (stdio children reaped)."""
        self.stopped = True
        connections = [self.main, *self._per_session.values()]
        self._per_session.clear()
        for connection in connections:
            connection.close()
        with anyio.move_on_after(STOP_WAIT):
            for connection in connections:
                await connection.finished.wait()

    async def subscribe(self, connection: Connection, uri: str, on: bool) -> None:
        """Start or stop resource updates for `uri` on `connection` (one `connection_for` returned).

        Taking the connection, not the session, means an unsubscribe that runs after its session ended
        never starts a new per-session connection for it.

        Raises:
            UpstreamError, MCPError: as for `request`.
        """
        if connection.closed:  # its session ended: nothing left upstream to subscribe or unsubscribe
            return
        await connection.session(min(self.spec.timeout, CONNECT_WAIT))
        if connection.modern:  # 2026-07-28: subscriptions ride the listen stream
            connection.watch(uri, on)
        elif on:
            await self._on(connection, lambda s: s.subscribe_resource(uri))
        else:
            await self._on(connection, lambda s: s.unsubscribe_resource(uri))

    # ------------------------------------------------------------ catalog

    async def _connected(self, connection: Connection, session: ClientSession) -> None:
        if connection is self.main:
            await self.refresh(session)

    async def refresh(self, session: ClientSession | None = None) -> None:
        """Re-list everything the server offers and tell the hub what changed."""
        async with self._refresh_lock:
            session = session or await self.main.session(CONNECT_WAIT)
            caps = self.main.server_capabilities or types.ServerCapabilities()
            tools = await _all_pages(session.list_tools, "tools") if caps.tools else []
            resources = await _all_pages(session.list_resources, "resources") if caps.resources else []
            templates = (
                await _all_pages(session.list_resource_templates, "resource_templates") if caps.resources else []
            )
            prompts = await _all_pages(session.list_prompts, "prompts") if caps.prompts else []
            old, old_hidden = self.catalog, self.hidden
            all_tools = {t.name: t for t in tools}
            catalog = Catalog(
                tools={n: t for n, t in all_tools.items() if self.spec.exposes(n)},
                resources=tuple(resources),
                templates=tuple(templates),
                prompts={p.name: p for p in prompts},
                all_tools=all_tools,
            )
            hidden = await self.hub.quarantine(self, catalog)
            self.catalog, self.hidden = catalog, hidden  # together: a changed tool is never shown unchecked
        changed = [
            kind
            for kind, before, after in (
                ("tools", (old.all_tools, old_hidden), (self.catalog.all_tools, self.hidden)),
                ("resources", (old.resources, old.templates), (self.catalog.resources, self.catalog.templates)),
                ("prompts", old.prompts, self.catalog.prompts),
            )
            if before != after
        ]
        for kind in changed:
            await self.hub.changed(self.name, kind)

    async def requarantine(self) -> None:
        """Check the current catalog again (its pins changed) and announce the tool list if that changed it."""
        async with self._refresh_lock:
            before = self.hidden
            self.hidden = await self.hub.quarantine(self, self.catalog)
        if self.hidden != before:
            await self.hub.changed(self.name, "tools")

    async def _notification(self, connection: Connection, message: types.ServerNotification) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            await self.hub.updated(connection, message.params.uri)
        elif isinstance(
            message,
            types.ToolListChangedNotification
            | types.ResourceListChangedNotification
            | types.PromptListChangedNotification,
        ):
            if connection is self.main:
                self.hub.spawn(self._refresh_quietly)
        elif isinstance(message, types.LoggingMessageNotification) and connection.owner_sid is not None:
            # Log lines reach only the agent they can be attributed to: a per-session server's own caller.
            route = connection.attributable_route()
            if route is not None:
                await route.log(message.params)
            else:
                await self.hub.session_log(connection.owner_sid, message.params)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except (UpstreamError, MCPError) as exc:
            log.warning("upstream %s: re-listing after list_changed failed: %s", self.name, exc)


async def _all_pages(method: Callable[..., Awaitable[Any]], attribute: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(_PAGE_CAP):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await method(params=params)
        items.extend(getattr(page, attribute))
        cursor = page.next_cursor
        if not cursor:
            break
    return items


class Upstreams:
    """Every configured upstream, and the task group that owns their connections."""

    def __init__(
        self,
        specs: Mapping[str, UpstreamSpec],
        *,
        stderr_dir: Path | None = None,
        quarantine: Quarantine = _nothing_hidden,  # the pin check (gateway/pins/definitions.py)
    ) -> None:
        self.stderr_dir = stderr_dir
        self.servers: dict[str, Upstream] = {name: Upstream(spec, self) for name, spec in specs.items()}
        self._tasks = OwnedTasks()  # every connection's supervisor, while `run()` is entered
        self._change_listeners: list[ChangeListener] = []
        self._update_listeners: list[UpdateListener] = []
        self._log_listeners: list[LogListener] = []
        self.quarantine = quarantine

    def __getitem__(self, name: str) -> Upstream:
        return self.servers[name]

    def get(self, name: str) -> Upstream | None:
        return self.servers.get(name)

    def on_change(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def on_update(self, listener: UpdateListener) -> None:
        self._update_listeners.append(listener)

    def on_log(self, listener: LogListener) -> None:
        self._log_listeners.append(listener)

    async def session_log(self, sid: str, params: types.LoggingMessageNotificationParams) -> None:
        for listener in self._log_listeners:
            await listener(sid, params)

    async def changed(self, server: str, kind: str) -> None:
        for listener in self._change_listeners:
            await listener(server, kind)

    async def updated(self, connection: Connection, uri: str) -> None:
        for listener in self._update_listeners:
            await listener(connection, uri)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._tasks.group is None:
            raise UpstreamError("the gateway is shutting down")
        self._tasks.group.start_soon(fn, *args)

    def release(self, sid: str) -> None:
        for upstream in self.servers.values():
            upstream.release(sid)

    def session_sids(self) -> set[str]:
        """Every agent session that owns a per-session connection (its end must be noticed to stop them)."""
        return {sid for upstream in self.servers.values() for sid in upstream.session_sids()}

    async def start(self, spec: UpstreamSpec) -> Upstream:
        """Start a server that was not running (hot reload); it joins `servers` once its first connect was tried.

        Raises:
            UpstreamError: the gateway is shutting down.
        """
        tasks = self._tasks.group
        if tasks is None:
            raise UpstreamError("the gateway is shutting down")
        upstream = Upstream(spec, self)
        await tasks.start(upstream.main.run)
        return upstream

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Upstreams]:
        """Connect every upstream (waiting for each first attempt) and keep them up until exit."""
        async with self._tasks.run() as tg:
            async with anyio.create_task_group() as starting:
                for upstream in self.servers.values():
                    starting.start_soon(tg.start, upstream.main.run)
            yield self
