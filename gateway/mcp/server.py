"""The MCP server that agents talk to: one low-level `Server` per view.

Handlers read the authenticated principal the HTTP edge put on the request,
project the upstream catalogs through its grant (views.py), and hand tool
calls to the pipeline. Everything not granted is answered exactly as if it did
not exist.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

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
from gateway.audit.events import Event
from gateway.errors import AuthError, Stopped, Unavailable, UpstreamError
from gateway.identity.principal import Principal
from gateway.mcp.fanout import Listener, listen_meta
from gateway.mcp.views import View
from gateway.spend.budgets import stop_detail
from gateway.telemetry import Tracing
from gateway.upstream import Downstream, Upstream
from gateway.upstream.caller import CALLER, Caller

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.front")

PRINCIPAL = "gateway.principal"
ENTERPRISE_MANAGED_AUTHORIZATION = "io.modelcontextprotocol/enterprise-managed-authorization"
Ctx = ServerRequestContext[Any, Any]

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


LEGACY_RESOURCE_NOT_FOUND = -32002  # 2025-11-25; retired in 2026-07-28, which uses -32602
STOPPED = -32010  # a budget, rate or loop stop on a method other than tools/call
UNAVAILABLE = -32011  # store or audit sink unavailable: nothing was forwarded
CREDENTIAL_SHARED = -32012  # shared_credentials.block: a client beyond the agent's distinct-client limit
SESSION_ENDED = -32014  # the session ended while the request was in flight (HTTP 401 where no response had started)


def resource_not_found(ctx: Ctx, uri: str) -> MCPError:
    """The one answer for a resource that is not granted and one that does not exist."""
    code = types.INVALID_PARAMS if is_modern(ctx) else LEGACY_RESOURCE_NOT_FOUND
    return MCPError(code, f"Resource not found: {uri}", {"uri": uri})


def unknown_prompt(name: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name}")


def stopped_error(stop: Stopped) -> MCPError:
    return MCPError(STOPPED, str(stop), stop_detail(stop))


def unavailable_error(exc: Exception) -> MCPError:
    return MCPError(UNAVAILABLE, f"Service unavailable, nothing was forwarded: {exc}")


def session_ended_error(exc: AuthError) -> MCPError:
    return MCPError(SESSION_ENDED, f"The session has ended ({exc.reason}); nothing more is forwarded: get a new token")


class ContextDownstream:
    """The agent behind one inbound request: where its call's progress, logs and questions go."""

    def __init__(self, ctx: Ctx, sid: str) -> None:
        self.ctx = ctx
        self.sid = sid

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        ctx = self.ctx
        if is_modern(ctx) or not ctx.session.can_send_request:
            return types.ErrorData(code=types.INVALID_REQUEST, message="the client cannot receive requests")
        if not caller_of(ctx).answers(request.method):  # a shared upstream declared what the gateway can relay
            return types.ErrorData(
                code=types.METHOD_NOT_FOUND, message=f"the client did not declare the capability {request.method} needs"
            )
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

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def server(self, view: View) -> Server[Any]:
        name = "mcp-identity-gateway" if view.server is None else f"mcp-identity-gateway/{view.server}"
        handlers = _Handlers(self.gw, view)
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
        if any(provider.id_jag for provider in self.gw.config.identity_providers):
            server.extensions[ENTERPRISE_MANAGED_AUTHORIZATION] = {}  # SEP-2133: ID-JAGs are accepted
        # Replaces the SDK's default OpenTelemetry middleware: a span per message costs on every call and the
        # gateway's own audit stream and metrics already cover what crosses it.
        server.middleware = [_caller_context, _SharedCredentialCheck(self.gw)]
        if isinstance(self.gw.telemetry, Tracing):  # a span per request only when traces are exported
            server.middleware.insert(0, self.gw.telemetry.middleware)
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


class _SharedCredentialCheck:
    """Every request's client fingerprint goes to the shared-credential detector before it is handled."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

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
        fingerprint = (
            principal.remote_addr,
            name if isinstance(name, str) else None,
            version if isinstance(version, str) else None,
        )
        verdict = self.gw.shared.observe(principal.agent.id, fingerprint)
        if verdict.report is not None:
            try:
                await self.gw.audit.emit(
                    Event.CREDENTIAL_SHARED_SUSPECTED, durable=True, **{**principal.audit_fields(), **verdict.report}
                )
            except Unavailable as exc:
                raise unavailable_error(exc) from None
        if not verdict.allowed:
            raise MCPError(
                CREDENTIAL_SHARED,
                "Refused: this agent's credential is in use by more clients than "
                "allowed (shared_credentials); use a credential of your own",
            )
        return await call_next(ctx)


class _Handlers:
    def __init__(self, gw: Gateway, view: View) -> None:
        self.gw = gw
        self.view = view

    def _principal(self, ctx: Ctx) -> Principal:
        principal = principal_of(ctx)
        mcp_session = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
        if mcp_session and not is_modern(ctx) and self.gw.fanout.session_listener(mcp_session) is None:
            self.gw.fanout.remember(mcp_session, Listener(principal.sid, self.view, session=ctx.session))
        return principal

    # ------------------------------------------------------------ tools

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal = self._principal(ctx)
        tools = self.view.tools(principal.grant)
        await self.gw.audit.emit(
            Event.TOOLS_LISTED,
            **principal.audit_fields(),
            **request_fields(ctx),
            server=self.view.server,
            count=len(tools),
        )
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        principal = self._principal(ctx)
        leg = ContextDownstream(ctx, principal.sid)
        async with self._refusals(principal):  # stops and a down upstream are answered as tool results already
            answer: types.CallToolResult | types.InputRequiredResult
            if params.request_state is not None:
                answer = await self.gw.exchanges.resume(
                    principal.sid, params.request_state, params.input_responses, leg
                )
                return answer
            admitted = await self.gw.pipeline.admit(
                principal,
                params.name,
                self.view.resolve_tool(principal.grant, params.name),
                params.arguments,
                request_fields(ctx),
            )
            if isinstance(admitted, types.CallToolResult):
                return admitted
            server = admitted.upstream.name

            async def forward(downstream: Downstream) -> types.CallToolResult:
                return self.view.result_out(server, await self.gw.pipeline.forward(admitted, downstream))

            if is_modern(ctx) and answers_input(ctx):  # the call may have to pause for the client's answers
                answer = await self.gw.exchanges.start(principal.sid, leg, forward)
                return answer
            return await forward(leg)

    async def _session_ended(self, principal: Principal, exc: AuthError) -> MCPError:
        """The session ended after this request was authenticated (a revoke racing it, or cutting it mid-call).

        Whatever this process had not yet heard of the end it acts on now: that cuts this request's own
        scope, so the edge answers HTTP 401 where no response has started; a stream already open gets the error.
        """
        await self.gw.sessions.notify_ended(principal.sid)
        return session_ended_error(exc)

    @contextlib.asynccontextmanager
    async def _refusals(self, principal: Principal, server: str = "") -> AsyncIterator[None]:
        """The pipeline's refusals, as the Errors table answers them (tools/call answers stops and a down
        upstream as tool results, so only the others reach it there); `server` names the upstream when it is down."""
        try:
            yield
        except Stopped as stop:
            raise stopped_error(stop) from None
        except Unavailable as exc:
            raise unavailable_error(exc) from None
        except AuthError as exc:
            raise await self._session_ended(principal, exc) from None
        except UpstreamError as exc:  # the detail goes to the log and the audit only
            raise MCPError(types.INTERNAL_ERROR, exc.for_agent(server)) from None

    # ------------------------------------------------------------ resources

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=self.view.resources(self._principal(ctx).grant))

    async def list_resource_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=self.view.templates(self._principal(ctx).grant))

    async def _pausable(
        self, ctx: Ctx, principal: Principal, method: str, params: Any, work: Callable[[Downstream], Awaitable[Any]]
    ) -> Any:
        """Run `work` so that an upstream's input requests reach this client: asked directly on a handshake-era
        session, as `InputRequiredResult` rounds (one exchange, resumed by its sealed requestState) on 2026-07-28."""
        leg = ContextDownstream(ctx, principal.sid)
        if params.request_state is not None:
            return await self.gw.exchanges.resume(
                principal.sid, params.request_state, params.input_responses, leg, method
            )
        if is_modern(ctx) and answers_input(ctx):
            return await self.gw.exchanges.start(principal.sid, leg, work, method)
        return await work(leg)

    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        principal = self._principal(ctx)
        target = self.view.resolve_uri(principal.grant, params.uri)
        server = target[0].name if target else ""

        def out(result: types.ReadResourceResult) -> types.ReadResourceResult:
            contents = [c.model_copy(update={"uri": self.view.uri_out(server, c.uri)}) for c in result.contents]
            return result.model_copy(update={"contents": contents})

        async def work(downstream: Downstream) -> types.ReadResourceResult:
            try:
                return await self.gw.pipeline.read_resource(
                    principal,
                    params.uri,
                    target,
                    request_fields(ctx),
                    resource_not_found(ctx, params.uri),
                    out,
                    downstream,
                )
            except MCPError as exc:
                if exc.code in (LEGACY_RESOURCE_NOT_FOUND, types.INVALID_PARAMS):
                    raise resource_not_found(ctx, params.uri) from None
                raise

        async with self._refusals(principal, server):
            return await self._pausable(ctx, principal, "resources/read", params, work)  # type: ignore[no-any-return]

    def _listener(self, ctx: Ctx, principal: Principal) -> Listener:
        mcp_session = ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None
        listener = self.gw.fanout.session_listener(mcp_session) if mcp_session else None
        if listener is None:
            raise MCPError(types.INVALID_REQUEST, "resources/subscribe needs an MCP session")
        return listener

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        principal = self._principal(ctx)
        target = self.view.resolve_uri(principal.grant, params.uri)
        if target is None:
            raise resource_not_found(ctx, params.uri)
        try:
            await self.gw.fanout.subscribe(self._listener(ctx, principal), principal, target[0], target[1], params.uri)
        except UpstreamError as exc:
            raise MCPError(types.INTERNAL_ERROR, exc.for_agent(target[0].name)) from None
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        principal = self._principal(ctx)
        target = self.view.resolve_uri(principal.grant, params.uri)
        if target is None:
            raise resource_not_found(ctx, params.uri)
        await self.gw.fanout.unsubscribe(self._listener(ctx, principal), target[0], target[1])
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
        self.gw.fanout.add_stream(listener)
        try:
            for uri in uris:  # an ungranted URI is acknowledged like an unknown one, and never fires
                target = self.view.resolve_uri(principal.grant, uri)
                if target is not None:
                    try:
                        await self.gw.fanout.subscribe(listener, principal, target[0], target[1], uri)
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
            self.gw.fanout.remove_stream(listener)
            send.close()
        return types.SubscriptionsListenResult(_meta=meta)

    # ------------------------------------------------------------ prompts, completion, logging

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=self.view.prompts(self._principal(ctx).grant))

    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        principal = self._principal(ctx)
        target = self.view.resolve_prompt(principal.grant, params.name)

        async def work(downstream: Downstream) -> types.GetPromptResult:
            return await self.gw.pipeline.get_prompt(
                principal,
                params.name,
                target,
                params.arguments,
                request_fields(ctx),
                unknown_prompt(params.name),
                downstream,
            )

        async with self._refusals(principal, target[0].name if target else params.name):
            return await self._pausable(ctx, principal, "prompts/get", params, work)  # type: ignore[no-any-return]

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        principal = self._principal(ctx)
        ref = params.ref
        upstream: Upstream | None = None
        upstream_ref: types.PromptReference | types.ResourceTemplateReference = ref
        if isinstance(ref, types.PromptReference):
            prompt = self.view.resolve_prompt(principal.grant, ref.name)
            fields: dict[str, Any] = {"prompt": ref.name}
            missing = unknown_prompt(ref.name)
            if prompt is not None:
                upstream, upstream_ref = prompt[0], ref.model_copy(update={"name": prompt[1]})
        else:
            resource = self.view.resolve_uri(principal.grant, ref.uri)
            fields = {"resource": ref.uri}
            missing = resource_not_found(ctx, ref.uri)
            if resource is not None:
                upstream, upstream_ref = resource[0], ref.model_copy(update={"uri": resource[1]})
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = params.context.arguments if params.context else None
        async with self._refusals(principal, upstream.name if upstream else ""):
            return await self.gw.pipeline.complete(
                principal,
                {**request_fields(ctx), **fields},
                upstream,
                lambda s: s.complete(upstream_ref, argument, context_arguments=context),
                {"argument": argument, "context": context},
                missing,
            )

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        """Forwarded to this session's own (per-session) connections of the servers its grant reaches.

        Shared connections are not ours to set. Each forward is audited first (`logging.set_level`, durable):
        a server the agent has nothing on is never told, nor started, and nothing reaches one unrecorded. A
        budget stop refuses it like any other method.
        """
        principal = self._principal(ctx)
        fields = {**principal.audit_fields(), **request_fields(ctx), "level": params.level}
        targets = [u for u in self.view.granted_servers(principal.grant) if u.spec.isolation == "per_session"]
        if targets:  # a stopped session stays stopped, for this method too
            async with self._refusals(principal):
                try:
                    await self.gw.budgets.check(principal)
                except Stopped as stop:
                    await self.gw.audit.emit(
                        Event.LOGGING_SET_LEVEL, durable=True, **fields, decision="deny", reason=stop.limit
                    )
                    raise
        for upstream in targets:
            try:
                await self.gw.audit.emit(
                    Event.LOGGING_SET_LEVEL, durable=True, **fields, server=upstream.name, decision="allow"
                )
            except Unavailable as exc:
                raise unavailable_error(exc) from None
            try:
                await upstream.request(principal, lambda s: s.set_logging_level(params.level))
            except (UpstreamError, MCPError) as exc:
                log.info("setLevel on %s failed: %s", upstream.name, exc)
        return types.EmptyResult()
