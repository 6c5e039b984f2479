"""The MCP server that agents talk to: one low-level `Server` per view.

The handlers are thin adapters: each reads the authenticated principal the HTTP
edge put on the request and the request's fields, hands the request to the
pipeline (pipeline.py: tools, resource reads, prompts, completions, setLevel)
or to the fan-out (subscriptions), and returns its answer. `map_errors` is the
one place the gateway's exceptions become MCP errors. Everything not granted
is answered exactly as if it did not exist.

A paused call (2026-07-28 input requests) runs its forward in an exchange
(exchanges.py) that outlives the request: `_Handlers._pause` hands the pipeline
that seam, and `_resume` carries the client's next leg to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.connection import allowed_log_levels
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.subscriptions import event_to_notification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import __version__
from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.errors import AuthError, CredentialShared, GatewayError, ResourceNotFound, UpstreamError
from gateway.identity.principal import PRINCIPAL, Principal
from gateway.identity.shared import SharedCredentialDetector
from gateway.mcp.exchanges import Exchanges
from gateway.mcp.fanout import Fanout, Listener, listen_meta
from gateway.mcp.pipeline import Pause, Pipeline
from gateway.mcp.views import View
from gateway.telemetry import OFF, Off, Tracing
from gateway.upstream.caller import CALLER, Caller

log = logging.getLogger("gateway.front")

ENTERPRISE_MANAGED_AUTHORIZATION = "io.modelcontextprotocol/enterprise-managed-authorization"
Ctx = ServerRequestContext[Any, Any]
R = TypeVar("R")
# How a pausable request starts: given the principal, the request's leg and how its forward may pause.
Start = Callable[[Principal, "ContextDownstream", Pause | None], Awaitable[R | types.InputRequiredResult]]

_RESULT_TYPES: dict[str, type[Any]] = {
    "sampling/createMessage": types.CreateMessageResult,
    "elicitation/create": types.ElicitResult,
    "roots/list": types.ListRootsResult,
}


def principal_of(ctx: Ctx) -> Principal:
    request = ctx.request
    principal = request.scope.get(PRINCIPAL) if request is not None else None
    if not isinstance(principal, Principal):  # the HTTP edge authenticates every request first
        raise MCPError(types.INVALID_REQUEST, "unauthenticated")
    return principal


def is_modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def answers_input(ctx: Ctx) -> bool:
    """Whether the client declared it can answer any input request (sampling, elicitation or roots)."""
    caps = ctx.session.client_capabilities
    return caps is not None and (caps.sampling is not None or caps.elicitation is not None or caps.roots is not None)


def caller_of(ctx: Ctx) -> Caller:
    return Caller(ctx.session.client_capabilities or types.ClientCapabilities(), ctx.protocol_version)


def request_fields(ctx: Ctx) -> dict[str, Any]:
    """The per-request audit fields: which MCP session, protocol and client."""
    request = ctx.request
    client = ctx.session.client_params.client_info.name if ctx.session.client_params else None
    return {
        "mcp_session": request.headers.get("mcp-session-id") if request is not None else None,
        "protocol_version": ctx.protocol_version,
        "client": client,
    }


def cannot_ask(caller: Caller, method: str, *, can_send_request: bool) -> types.ErrorData | None:
    """Why the client behind a request cannot be asked an input request of `method` on it, or None if it can:
    a 2026-07-28 client is never asked mid-request, nor one whose request's channel carries no request, nor one
    that did not declare the capability (a shared upstream declared what the gateway can relay)."""
    if caller.modern or not can_send_request:
        return types.ErrorData(code=types.INVALID_REQUEST, message="the client cannot receive requests")
    if not caller.answers(method):
        return types.ErrorData(
            code=types.METHOD_NOT_FOUND, message=f"the client did not declare the capability {method} needs"
        )
    return None


@contextlib.asynccontextmanager
async def map_errors(modern: bool, session_ended: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
    """The one boundary between the gateway's exceptions and the MCP errors an agent is answered with.

    Each exception carries its own wire shape (gateway/errors.py: `code`, `legacy_code` on a handshake-era
    session, `rpc_message()`, `rpc_data()`); an exception without a code, and an `MCPError` (the upstream's
    or the agent's own answer), pass through unchanged.

    `session_ended` is awaited first when the session ended after this request was authenticated (a revoke
    racing it, or cutting it mid-call): whatever this process had not yet heard of the end it acts on now,
    which cuts this request's own scope, so the edge answers HTTP 401 where no response has started; a
    stream already open gets the error.
    """
    try:
        yield
    except GatewayError as exc:
        if exc.code is None:
            raise
        if isinstance(exc, AuthError) and session_ended is not None:
            await session_ended()
        code = exc.legacy_code if exc.legacy_code is not None and not modern else exc.code
        raise MCPError(code, exc.rpc_message(), exc.rpc_data()) from None


class ContextDownstream:
    """The agent behind one inbound request: where its call's progress, logs and questions go."""

    def __init__(self, ctx: Ctx, sid: str) -> None:
        self.ctx = ctx
        self.sid = sid

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        ctx = self.ctx
        refused = cannot_ask(caller_of(ctx), request.method, can_send_request=ctx.session.can_send_request)
        if refused is not None:
            return refused
        result_type = _RESULT_TYPES[request.method]
        if isinstance(request, types.CreateMessageRequest) and request.params.tools:
            result_type = types.CreateMessageResultWithTools
        try:
            return await ctx.session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        except MCPError as exc:
            return exc.error

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        await self.ctx.session.report_progress(progress, total, message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        ctx = self.ctx
        if params.level in allowed_log_levels(ctx.protocol_version, ctx.meta):
            await ctx.session.send_notification(
                types.LoggingMessageNotification(params=params), related_request_id=ctx.request_id
            )


class Front:
    """Builds the MCP servers for `/mcp` and `/servers/<name>/mcp`."""

    def __init__(
        self,
        pipeline: Pipeline,
        exchanges: Exchanges,
        fanout: Fanout,
        shared: SharedCredentials,
        session_ended: Callable[[str], Awaitable[None]],
        telemetry: Off | Tracing = OFF,
        *,
        id_jag: bool = False,
    ) -> None:
        """`shared` vets each request's client; `session_ended(sid)` acts on a session's end that a request
        learnt of first; `id_jag`: an identity provider's ID-JAGs are accepted (SEP-2133)."""
        self.pipeline = pipeline
        self.exchanges = exchanges
        self.fanout = fanout
        self.shared = shared
        self.session_ended = session_ended
        self.telemetry = telemetry
        self.id_jag = id_jag

    def server(self, view: View) -> Server[Any]:
        name = "mcp-identity-gateway" if view.server is None else f"mcp-identity-gateway/{view.server}"
        handlers = _Handlers(self, view)
        server: Server[Any] = _ListChangingServer(
            name,
            version=__version__,
            instructions=None,
            get_tool_input_schema=lambda _name: None,  # arguments are checked by the grant and the upstream
            on_list_tools=handlers.list_tools,
            on_call_tool=handlers.call_tool,
            on_list_resources=handlers.list_resources,
            on_list_resource_templates=handlers.list_resource_templates,
            on_read_resource=handlers.read_resource,
            on_subscribe_resource=handlers.subscribe,
            on_unsubscribe_resource=handlers.unsubscribe,
            on_subscriptions_listen=handlers.listen,
            on_list_prompts=handlers.list_prompts,
            on_get_prompt=handlers.get_prompt,
            on_completion=handlers.complete,
        )
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, handlers.set_level)
        if self.id_jag:
            server.extensions[ENTERPRISE_MANAGED_AUTHORIZATION] = {}  # SEP-2133: ID-JAGs are accepted
        # Replaces the SDK's default OpenTelemetry middleware: a span per message costs on every call and the
        # gateway's own audit stream and metrics already cover what crosses it.
        server.middleware = [_caller_context, self.shared]
        if isinstance(self.telemetry, Tracing):  # a span per request only when traces are exported
            server.middleware.insert(0, self.telemetry.middleware)
        return server


class _ListChangingServer(Server[Any]):
    """Declares `listChanged` in the handshake era too: the fanout sends list changes on both eras' streams
    (the SDK's default declares them only for 2026-07-28, where `subscriptions/listen` carries them)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        changes = notification_options or NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        return super().create_initialization_options(changes, experimental_capabilities, extensions)


async def _caller_context(ctx: Ctx, call_next: CallNext) -> HandlerResult:
    """Every upstream request made while serving this one declares this client's capabilities (and era)."""
    token = CALLER.set(caller_of(ctx))
    try:
        return await call_next(ctx)
    finally:
        CALLER.reset(token)


class SharedCredentials:
    """Middleware: every request's client fingerprint goes to the shared-credential detector before it is handled."""

    def __init__(self, detector: SharedCredentialDetector, audit: Audit) -> None:
        self.detector = detector
        self.audit = audit

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        principal = ctx.request.scope.get(PRINCIPAL) if ctx.request is not None else None
        if ctx.request_id is None or not isinstance(principal, Principal):
            return await call_next(ctx)
        name: object
        version: object
        if ctx.session.client_params is not None:
            client = ctx.session.client_params.client_info
            name, version = client.name, client.version
        else:  # initialize: the session learns its client only after the handshake
            info = (ctx.params or {}).get("clientInfo")
            name, version = (info.get("name"), info.get("version")) if isinstance(info, dict) else (None, None)
        async with map_errors(is_modern(ctx)):
            await self.check(principal, name, version)
        return await call_next(ctx)

    async def check(self, principal: Principal, name: object, version: object) -> None:
        """Record a suspected shared credential; refuse the request when the agent's policy says so.

        Raises:
            CredentialShared: this client's fingerprint is refused for the agent.
        """
        fingerprint = (
            principal.remote_addr,
            name if isinstance(name, str) else None,
            version if isinstance(version, str) else None,
        )
        verdict = self.detector.observe(principal.agent.id, fingerprint)
        if verdict.report is not None:
            await self.audit.emit(
                Event.CREDENTIAL_SHARED_SUSPECTED, durable=True, **{**principal.audit_fields(), **verdict.report}
            )
        if not verdict.allowed:
            raise CredentialShared()


class _Handlers:
    """The MCP handlers of one view: each reads the request, hands it to the pipeline under `map_errors`, returns."""

    def __init__(self, front: Front, view: View) -> None:
        self.front = front
        self.pipeline = front.pipeline
        self.fanout = front.fanout
        self.view = view

    def _principal(self, ctx: Ctx) -> Principal:
        principal = principal_of(ctx)
        mcp_session = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
        if mcp_session and not is_modern(ctx) and self.fanout.session_listener(mcp_session) is None:
            self.fanout.remember(mcp_session, Listener(principal.sid, self.view, session=ctx.session))
        return principal

    def _errors(self, ctx: Ctx, principal: Principal) -> contextlib.AbstractAsyncContextManager[None]:
        return map_errors(is_modern(ctx), lambda: self.front.session_ended(principal.sid))

    def _pause(self, ctx: Ctx, leg: ContextDownstream, method: str) -> Pause | None:
        """How a forward may pause for the client's answers: in an exchange (one `InputRequiredResult` round
        per leg, resumed by its sealed requestState) on a 2026-07-28 client that can answer; else not at all
        (a handshake-era client is asked directly, on `leg`)."""
        if not (is_modern(ctx) and answers_input(ctx)):
            return None
        exchanges = self.front.exchanges
        return lambda work: exchanges.start(leg.sid, leg, work, method)

    async def _pausable(self, ctx: Ctx, params: Any, method: str, start: Start[R]) -> R | types.InputRequiredResult:
        """A request that may pause for the client's answers (tools/call, resources/read, prompts/get): the
        client's next leg of a paused one goes to the exchange its requestState names; a new one is `start`ed
        with the principal, this leg and how it may pause."""
        principal = self._principal(ctx)
        leg = ContextDownstream(ctx, principal.sid)
        async with self._errors(ctx, principal):
            if params.request_state is not None:
                return await self.front.exchanges.resume(  # type: ignore[no-any-return]
                    leg.sid, params.request_state, params.input_responses, leg, method
                )
            return await start(principal, leg, self._pause(ctx, leg, method))

    # ------------------------------------------------------------ tools

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal = self._principal(ctx)
        async with self._errors(ctx, principal):
            return types.ListToolsResult(
                tools=await self.pipeline.list_tools(self.view, principal, request_fields(ctx))
            )

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        # Stops and a down upstream are answered as tool results already.
        return await self._pausable(
            ctx,
            params,
            "tools/call",
            lambda principal, leg, pause: self.pipeline.call_tool(
                self.view, principal, params.name, params.arguments, request_fields(ctx), leg, pause
            ),
        )

    # ------------------------------------------------------------ resources

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=self.view.resources(self._principal(ctx).grant))

    async def list_resource_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=self.view.templates(self._principal(ctx).grant))

    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        return await self._pausable(
            ctx,
            params,
            "resources/read",
            lambda principal, leg, pause: self.pipeline.read_resource(
                self.view, principal, params.uri, request_fields(ctx), leg, pause
            ),
        )

    def _listener(self, ctx: Ctx) -> Listener:
        mcp_session = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
        listener = self.fanout.session_listener(mcp_session) if mcp_session else None
        if listener is None:
            raise MCPError(types.INVALID_REQUEST, "resources/subscribe needs an MCP session")
        return listener

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        principal = self._principal(ctx)
        async with self._errors(ctx, principal):
            target = self.view.resolve_uri(principal.grant, params.uri)
            if target is None:
                raise ResourceNotFound(params.uri)
            try:
                await self.fanout.subscribe(self._listener(ctx), principal, target[0], target[1], params.uri)
            except UpstreamError as exc:
                exc.server = target[0].name
                raise
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        principal = self._principal(ctx)
        async with self._errors(ctx, principal):
            target = self.view.resolve_uri(principal.grant, params.uri)
            if target is None:
                raise ResourceNotFound(params.uri)
            await self.fanout.unsubscribe(self._listener(ctx), target[0], target[1])
        return types.EmptyResult()

    async def listen(self, ctx: Ctx, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        """A 2026-07-28 change stream: acknowledged first, then the events this agent may see."""
        principal = self._principal(ctx)
        if ctx.request_id is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions/listen requires a request id")
        requested = params.notifications
        uris = tuple(requested.resource_subscriptions or ())
        honored = types.SubscriptionFilter(
            tools_list_changed=True if requested.tools_list_changed else None,
            prompts_list_changed=True if requested.prompts_list_changed else None,
            resources_list_changed=True if requested.resources_list_changed else None,
            resource_subscriptions=list(uris) or None,
        )
        meta = listen_meta(ctx.request_id)
        send, receive = anyio.create_memory_object_stream[Any](256)
        listener = Listener(principal.sid, self.view, honored=honored, uris=frozenset(uris), queue=send)
        self.fanout.add_stream(listener)
        try:
            for uri in uris:  # an ungranted URI is acknowledged like an unknown one, and never fires
                target = self.view.resolve_uri(principal.grant, uri)
                if target is not None:
                    try:
                        await self.fanout.subscribe(listener, principal, target[0], target[1], uri)
                    except (UpstreamError, MCPError) as exc:
                        log.info("listen: subscribing %s failed: %s", uri, exc)
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
                ),
                related_request_id=ctx.request_id,
            )
            async with receive:
                async for event in receive:
                    await ctx.session.send_notification(
                        event_to_notification(event, meta), related_request_id=ctx.request_id
                    )
        finally:
            self.fanout.remove_stream(listener)
            send.close()
        return types.SubscriptionsListenResult(_meta=meta)

    # ------------------------------------------------------------ prompts, completion, logging

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=self.view.prompts(self._principal(ctx).grant))

    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        return await self._pausable(
            ctx,
            params,
            "prompts/get",
            lambda principal, leg, pause: self.pipeline.get_prompt(
                self.view, principal, params.name, params.arguments, request_fields(ctx), leg, pause
            ),
        )

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        principal = self._principal(ctx)
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = params.context.arguments if params.context else None
        async with self._errors(ctx, principal):
            return await self.pipeline.complete(
                self.view, principal, params.ref, argument, context, request_fields(ctx)
            )

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        principal = self._principal(ctx)
        async with self._errors(ctx, principal):
            await self.pipeline.set_level(self.view, principal, params.level, request_fields(ctx))
        return types.EmptyResult()
