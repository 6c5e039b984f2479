"""One supervised MCP client connection to an upstream server.

The connection is owned by one long-lived task (the SDK requires a client to
be entered and exited in the same task). When the server dies (a stdio child
crashes, an HTTP session is lost) in-flight requests fail with a clear error
and the task reconnects with exponential backoff; callers wait for the next
healthy connection up to their own timeout.

Requests the server sends back (sampling, elicitation, roots) are delivered to
the `Downstream` of the call that caused them. A shared connection can only
attribute them when exactly one call is in flight; otherwise they are refused,
never guessed. Per-session connections belong to one agent session.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client
from mcp.client.session import ClientRequestContext, ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage
from mcp.shared.subscriptions import event_to_notification
from mcp_types import CLIENT_CAPABILITIES_META_KEY
from mcp_types.jsonrpc import JSONRPCResponse
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import __version__
from gateway.config.dirs import private_dir
from gateway.errors import UpstreamError
from gateway.metrics import METRICS
from gateway.upstream.caller import CALLER, Caller
from gateway.upstream.http_client import mcp_http_client
from gateway.upstream.http_transport import HttpTransport
from gateway.upstream.lanes import Lane, bind
from gateway.upstream.manifests import UpstreamSpec
from gateway.upstream.stdio import StdioTransport

log = logging.getLogger("gateway.upstream")
RESTARTS = METRICS.counter("gateway_upstream_restarts_total", "Upstream reconnects after a failure", ["server"])

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # seconds up before the backoff resets


class Downstream(Protocol):
    """Where a call's server-initiated traffic goes: the agent that made the call."""

    sid: str

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        """Forward a sampling, elicitation or roots request to the agent and return its answer.

        `key` is the upstream's own name for the request (an `InputRequiredResult` key), kept where it can be.
        """
        ...

    async def progress(self, progress: float, total: float | None, message: str | None) -> None: ...

    async def log(self, params: types.LoggingMessageNotificationParams) -> None: ...


Hook = Callable[["Connection", types.ServerNotification], Awaitable[None]]


def complete_by_default(result: dict[str, Any]) -> None:
    """A 2026-07-28 result without `resultType` is complete (the spec: clients MUST treat an absent one so);
    the SDK's strict validation would reject it, so the tag is filled in before it looks."""
    result.setdefault("resultType", "complete")


class _Watched:
    """A transport's read stream that sets `closed` when the server side of it ends (and reads absent result
    tags as complete once the connection speaks 2026-07-28).

    It wraps the stream rather than pumping it into another one: a pump costs every message from the server
    a second stream hop and a task switch.
    """

    def __init__(self, inner: Any, closed: anyio.Event, modern: Callable[[], bool]) -> None:
        self._inner = inner
        self._closed = closed
        self._modern = modern

    async def receive(self) -> Any:
        try:
            item = await self._inner.receive()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            self._closed.set()
            raise anyio.EndOfStream from None
        if self._modern() and isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCResponse):
            complete_by_default(item.message.result)
        return item

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed.set()
        await self._inner.aclose()

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def _watched(transport: Any, closed: anyio.Event, modern: Callable[[], bool]) -> AsyncIterator[Any]:
    """Enter a transport with its read stream watched (`_Watched`); `closed` fires when it ends, or on exit."""
    async with transport as (read, write):
        try:
            yield _Watched(read, closed, modern), write
        finally:
            closed.set()


class Connection:
    """A supervised client connection; `run()` is its owning task."""

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        on_notification: Hook,
        on_connected: Callable[[Connection, ClientSession], Awaitable[None]],
        owner_sid: str | None = None,
        stderr_dir: Path | None = None,
        caller: Caller | None = None,
    ) -> None:
        self.spec = spec
        self.owner_sid = owner_sid  # per_session connections belong to one agent session
        self.caller = caller  # per_session: the client that opened it (its era, and its handshake capabilities)
        self._on_notification = on_notification
        self._on_connected = on_connected
        self._stderr_dir = stderr_dir
        self._client: Client | None = None
        self._ready = anyio.Event()
        self._lost = anyio.Event()  # set by `lost()`: this attempt's connection is gone, reconnect
        self._stop = anyio.Event()
        self._routes: list[Downstream] = []
        self._watched: set[str] = set()
        self._relisten = anyio.Event()
        self._listen_scope = anyio.CancelScope()
        self.finished = anyio.Event()  # run() has returned: the client is closed, a stdio child reaped
        self.restarts = 0
        self._followed_era_failed = False  # the caller's handshake era did not connect: negotiate instead
        self.last_error: str | None = None
        self.server_capabilities: types.ServerCapabilities | None = None
        self.protocol_version: str | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve until the server goes away, reconnect with backoff; until `close()`."""
        try:
            await self._supervise(task_status)
        finally:
            self.finished.set()

    async def _supervise(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        backoff = BACKOFF_INITIAL
        started = False
        while not self._stop.is_set():
            closed = self._lost = anyio.Event()
            up_since = anyio.current_time()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    errlog = stack.enter_context(self._errlog())
                    client, lane = self._client_for(closed, errlog)
                    await stack.enter_async_context(client)
                    bind(client.session, lane)  # its first-round tools/calls go lean (upstream/lean.py)
                    self._client = client
                    self.protocol_version = client.protocol_version
                    _declare_per_request(client.session)
                    self.server_capabilities = client.server_capabilities
                    await self._on_connected(self, client.session)
                    self.last_error = None
                    self._ready.set()
                    if not started:
                        started = True
                        task_status.started()
                    log.info("upstream %s connected (%s)", self.spec.name, client.protocol_version)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_set_when, self._stop, closed)
                        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                            tg.start_soon(self._listen, client)
                        await closed.wait()
                        tg.cancel_scope.cancel()
            except Exception as exc:  # any failure to connect or serve means: reconnect
                if self._client is None and self._mode() == "legacy" and self.spec.protocol == "auto":
                    self._followed_era_failed = True  # e.g. a 2026-07-28-only server: the next try negotiates
                while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]  # the task groups' wrapping says nothing; what they wrap does
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("upstream %s failed: %s", self.spec.name, self.last_error)
            finally:
                self._ready = anyio.Event()
                self._client = None
            if self._stop.is_set():
                break
            if not started:
                started = True
                task_status.started()  # let startup proceed; callers see the server as down
            if anyio.current_time() - up_since > STABLE_AFTER:
                backoff = BACKOFF_INITIAL
            self.restarts += 1
            RESTARTS.inc(self.spec.name)
            log.info("upstream %s reconnecting in %.1fs", self.spec.name, backoff)
            with anyio.move_on_after(backoff):
                await self._stop.wait()
            backoff = min(backoff * 2, BACKOFF_MAX)

    def close(self) -> None:
        self._stop.set()

    def lost(self) -> None:
        """A request found the connection closed: reconnect. A stdio server's pipe ending already says so;
        an HTTP server that went away never ends the client's streams, so without this the connection would
        stay "up" on a session the restarted server no longer knows."""
        self._lost.set()

    @property
    def closed(self) -> bool:
        """`close()` was called: the connection is going away and will not reconnect."""
        return self._stop.is_set()

    # ------------------------------------------------------------ 2026-07-28 change stream

    def watch(self, uri: str, on: bool) -> None:
        """Add or drop a resource URI on this connection's listen stream (2026-07-28 upstreams)."""
        before = set(self._watched)
        if on:
            self._watched.add(uri)
        else:
            self._watched.discard(uri)
        if self._watched != before:
            self._relisten.set()
            self._listen_scope.cancel()

    @property
    def modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def _listen(self, client: Client) -> None:
        """A 2026-07-28 server announces changes only on a `subscriptions/listen` stream: keep one open."""
        caps = client.server_capabilities
        flags = {
            "tools_list_changed": bool(caps.tools and caps.tools.list_changed),
            "prompts_list_changed": bool(caps.prompts and caps.prompts.list_changed),
            "resources_list_changed": bool(caps.resources and caps.resources.list_changed),
        }
        subscribable = bool(caps.resources and caps.resources.subscribe)
        while True:
            self._relisten = anyio.Event()
            if any(flags.values()) or (subscribable and self._watched):
                try:
                    async with client.listen(**flags, resource_subscriptions=sorted(self._watched)) as subscription:
                        with anyio.CancelScope() as self._listen_scope:
                            async for event in subscription:
                                await self._on_notification(self, event_to_notification(event, {}))
                except Exception as exc:  # the stream is best effort: never let it take the connection down
                    log.info("upstream %s: listen stream ended: %s", self.spec.name, exc)
            if not self._relisten.is_set():
                with anyio.move_on_after(BACKOFF_MAX):
                    await self._relisten.wait()

    @property
    def up(self) -> bool:
        return self._client is not None and self._ready.is_set()

    def _client_for(self, closed: anyio.Event, errlog: Any) -> tuple[Client, Lane]:
        """The client for one connection attempt, and the transport under it (its lean path)."""
        spec = self.spec
        lane: StdioTransport | HttpTransport
        if spec.transport == "stdio":
            assert spec.command is not None and spec.cwd is not None and spec.work is not None
            for directory in (spec.work, spec.work / "tmp", spec.cwd):
                private_dir(directory)
            command, args = spec.command, list(spec.args)
            if spec.sandbox is not None:  # the launcher restricts itself, then execs the command
                command, args = spec.sandbox.launch(command, args)
            params = StdioServerParameters(command=command, args=args, env=spec.env, cwd=spec.cwd)
            lane = StdioTransport(params, errlog)
        else:
            assert spec.url is not None
            lane = HttpTransport(spec.url, mcp_http_client(headers=spec.headers or None))
        # The handshake declares capabilities once per connection: a per_session one declares what the client
        # that opened it declared; a shared one what the gateway can relay, each request checked against its
        # own caller (ContextDownstream.ask). On 2026-07-28 every request declares its caller's own.
        relay = self.caller.has if self.caller is not None else (lambda _capability: True)
        client = Client(
            _watched(lane.open(), closed, lambda: self.modern),
            mode=self._mode(),
            sampling_callback=self._sampling if relay("sampling") else None,
            elicitation_callback=self._elicitation if relay("elicitation") else None,
            list_roots_callback=self._roots if relay("roots") else None,
            message_handler=self._message,
            client_info=types.Implementation(name="mcp-identity-gateway", version=__version__),
            cache=None,
        )
        return client, lane

    def _mode(self) -> str:
        """The SDK client's `mode` for this connection's era (manifest `protocol:`)."""
        if self.spec.protocol == "2025-11-25":
            return "legacy"
        if self.spec.protocol == "2026-07-28":
            return "2026-07-28"
        if (
            self.caller is not None
            and self.caller.protocol_version is not None
            and not self.caller.modern
            and not self._followed_era_failed
        ):
            return "legacy"  # a per_session connection follows its handshake-era client: nothing to translate
        return "auto"

    def _errlog(self) -> Any:
        """Where a stdio server's stderr goes: a log file per server under the state dir (opened here, never by it)."""
        if self._stderr_dir is None:
            return open(os.devnull, "w")
        private_dir(self._stderr_dir)
        return (self._stderr_dir / f"{self.spec.name}.stderr.log").open("a")

    # ------------------------------------------------------------ requests

    async def session(self, timeout: float) -> ClientSession:
        """The live client session, waiting up to `timeout` for a reconnect.

        Raises:
            UpstreamError: the server is not reachable in time.
        """
        if not self._ready.is_set():
            with anyio.move_on_after(timeout):
                await self._ready.wait()
        client = self._client
        if client is None or not self._ready.is_set():
            detail = f": {self.last_error}" if self.last_error else ""
            raise UpstreamError(f"upstream server {self.spec.name!r} is unavailable{detail}")
        return client.session

    @contextlib.contextmanager
    def routed(self, downstream: Downstream) -> Any:
        """Mark a call in flight so server-initiated requests can find their caller."""
        self._routes.append(downstream)
        try:
            yield
        finally:
            self._routes.remove(downstream)

    def _route(self) -> Downstream | None:
        if self.owner_sid is not None:
            return self._routes[-1] if self._routes else None
        return self._routes[0] if len(self._routes) == 1 else None

    async def _sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        return await self._ask(types.CreateMessageRequest(params=params))  # type: ignore[return-value]

    async def _elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._ask(types.ElicitRequest(params=params))  # type: ignore[return-value]

    async def _roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        # An agent's roots are places on the agent's machine; the upstream runs on the gateway's.
        # They mean nothing to it and would leak the agent's layout, so the gateway offers none.
        return types.ListRootsResult(roots=[])

    async def _ask(self, request: types.InputRequest) -> types.InputResponse | types.ErrorData:
        route = self._route()
        if route is None:
            log.warning("upstream %s sent %s with no attributable caller; refused", self.spec.name, request.method)
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message="the gateway cannot attribute this request to one caller (use isolation: per_session)",
            )
        return await route.ask(request)

    async def _message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            log.warning("upstream %s transport error: %s", self.spec.name, message)
            return
        await self._on_notification(self, message)

    def attributable_route(self) -> Downstream | None:
        """The caller a per-session connection's unsolicited traffic belongs to, if a call is in flight."""
        return self._route() if self.owner_sid is not None else None


def _declare_per_request(session: ClientSession) -> None:
    """On 2026-07-28 each request carries the client's capabilities: make them the caller's, not the gateway's.

    The SDK stamps its own capability ad on every request and offers no per-request override, so the stamp it
    installed at connect is wrapped. Requests with no caller (catalog refreshes, pings) keep the SDK's ad.
    """
    stamp = getattr(session, "_stamp", None)
    if stamp is None or getattr(stamp, "_gateway", False):
        return

    def per_caller(data: dict[str, Any], opts: Any) -> None:
        stamp(data, opts)
        caller = CALLER.get()
        meta = (data.get("params") or {}).get("_meta")
        if caller is not None and isinstance(meta, dict) and CLIENT_CAPABILITIES_META_KEY in meta:
            meta[CLIENT_CAPABILITIES_META_KEY] = caller.declared()

    per_caller._gateway = True  # type: ignore[attr-defined]
    session._stamp = per_caller


async def _set_when(stop: anyio.Event, closed: anyio.Event) -> None:
    await stop.wait()
    closed.set()
