"""OpenTelemetry traces with identity, when a collector is configured; otherwise nothing at all.

On when `telemetry: {otlp_endpoint}` (gateway.yaml) or the standard
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and
OTEL_SDK_DISABLED is not "true"); spans go over OTLP/HTTP in batches, from the `otel`
extra (opentelemetry-sdk and the OTLP exporter, imported only then):

- a SERVER span per MCP request, `{mcp.method.name} {target}`, parented on the caller's
  trace (`params._meta.traceparent`/`tracestate`, else the HTTP `traceparent` header),
  with `mcp.method.name`, `jsonrpc.request.id`, `mcp.protocol.version`,
  `gen_ai.tool.name` and `gen_ai.operation.name=execute_tool` for tools/call,
  `error.type`, and the identity: `gen_ai.agent.id`, `enduser.id` (on_behalf_of),
  `gateway.session.id`, `gateway.task`; the call's `gateway.call_id` and
  `gateway.audit.seq` (its durable tool.call record) once it is admitted;
- a CLIENT span per upstream tools/call, `tools/call {tool}`, child of that span, with
  `server.address` and the same identity, whose context is sent to the upstream in
  the request's `_meta` (W3C traceparent/tracestate), so the upstream's spans join;
- metrics: the histogram `mcp.server.operation.duration` (seconds, by `mcp.method.name`,
  `mcp.protocol.version`, `error.type`) and the counter `gateway.tokens` (by
  `gen_ai.agent.id`, `gateway.server`, `gen_ai.tool.name`, `gateway.direction`:
  request|response|model_input|model_output), read off the audit records as they are
  written, like the Prometheus series;
- a SERVER span per POST /oauth/token, `oauth.token {grant}`, with the grant type, the agent
  and session it opened or the RFC 6749 error (never a secret or a token), and an INTERNAL
  span `audit.write` around a call's durable tool.call record, under the request's span.

Off, the gateway holds `OFF`: the front installs no middleware, the token handler is the
plain one (bound once, when the routes are made), and the pipeline's upstream and
audit-write hooks are one method call each that runs the work as before. (The mcp SDK itself imports
the OpenTelemetry API, a no-op without a provider; the SDK and exporter stay unloaded.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import jwt
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.audit.records import RESULT_EVENTS
from gateway.config.files import TelemetrySettings
from gateway.errors import ConfigError
from gateway.identity.principal import PRINCIPAL, Principal

if TYPE_CHECKING:
    from gateway.upstream import Upstream


class TracedCall(Protocol):
    """What a span of an upstream tool call reads off the pipeline's admitted call."""

    @property
    def principal(self) -> Principal: ...
    @property
    def upstream(self) -> Upstream: ...
    @property
    def name(self) -> str: ...
    @property
    def call_id(self) -> str: ...
    @property
    def audit_seq(self) -> int | None: ...


R = TypeVar("R")
Send = Callable[[Any], Awaitable[R]]  # the upstream request, given the _meta (RequestParamsMeta or None) to send
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The semantic conventions' advisory buckets for mcp.server.operation.duration, in seconds.
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_TOKEN_FIELDS = (
    ("request_tokens", "request"),
    ("response_tokens", "response"),
    ("input_tokens", "model_input"),
    ("output_tokens", "model_output"),
)
_TRACE_KEYS = ("traceparent", "tracestate")
TokenHandler = Callable[[Any, dict[str, Any]], Awaitable[Any]]  # (Request, form) -> Response: /oauth/token's handler
# The grant types a span is named after; any other value the caller sent is `other` (span names stay bounded).
_GRANTS = {
    "client_credentials": "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange": "token_exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer": "jwt_bearer",
}


class Off:
    """No telemetry: nothing is recorded, nothing is imported."""

    enabled = False

    def upstream_call(self, call: TracedCall, send: Send[R]) -> Awaitable[R]:
        return send(None)

    def token_handler(self, handler: TokenHandler) -> TokenHandler:
        return handler  # bound once, when the routes are made: a token request costs nothing more

    def audit_write(self, write: Callable[[], Awaitable[R]]) -> Awaitable[R]:
        return write()

    def force_flush(self) -> bool:
        return True

    def shutdown(self) -> None:
        return None


OFF = Off()


def build_telemetry(
    settings: TelemetrySettings, instance: str, environ: Mapping[str, str] = os.environ
) -> Off | Tracing:
    """OFF unless an OTLP endpoint is configured.

    Raises:
        ConfigError: an endpoint is configured but the `otel` extra is not installed.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OFF
    if settings.otlp_endpoint is None and not any(environ.get(v) for v in ENDPOINT_VARIABLES):
        return OFF
    try:
        return Tracing(settings.otlp_endpoint, instance, environ)
    except ImportError as exc:
        raise ConfigError(
            f"telemetry: an OTLP endpoint is set but {exc.name or 'opentelemetry-sdk'} is not "
            "installed; pip install 'mcp-identity-gateway[otel]'"
        ) from None


class Tracing:
    """Spans exported over OTLP/HTTP by a tracer provider of the gateway's own (never the process-global one)."""

    enabled = True

    def __init__(self, endpoint: str | None, instance: str, environ: Mapping[str, str]) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes = {"service.instance.id": instance}
        if not environ.get("OTEL_SERVICE_NAME"):  # the standard variable names the service when it is set
            attributes["service.name"] = "mcp-gateway"
        # An explicit endpoint is a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT; else the exporter reads the variables.
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces") if endpoint else OTLPSpanExporter()
        resource = Resource.create(attributes)
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("mcp-identity-gateway")
        metrics = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics") if endpoint else OTLPMetricExporter()
        self.meters = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metrics)])
        meter = self.meters.get_meter("mcp-identity-gateway")
        self.duration = meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="MCP requests handled, from arrival to the answer",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_counter(
            "gateway.tokens", unit="{token}", description="Tokens metered by the gateway, by agent, tool and direction"
        )
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._principal_key = PRINCIPAL

    # ------------------------------------------------------------ the MCP request: a server.middleware entry

    async def middleware(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.request_id is None:  # a notification: no request to time
            return await call_next(ctx)
        method = str(ctx.method)
        params = ctx.params or {}
        target = params.get("name") if method in ("tools/call", "prompts/get") else params.get("uri")
        attributes: dict[str, Any] = {"mcp.method.name": method, "jsonrpc.request.id": str(ctx.request_id)}
        if ctx.protocol_version:
            attributes["mcp.protocol.version"] = ctx.protocol_version
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
            if isinstance(target, str):
                attributes["gen_ai.tool.name"] = target
        request = ctx.request
        principal = request.scope.get(self._principal_key) if request is not None else None
        if isinstance(principal, Principal):
            attributes.update(_identity(principal))
        name = f"{method} {target}" if isinstance(target, str) else method
        # Metric attributes are bounded: never a caller-chosen name (the span has those).
        measured = {"mcp.method.name": method, "mcp.protocol.version": str(ctx.protocol_version or "")}
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            name,
            context=self._parent(ctx),
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call_next(ctx)
            except MCPError as exc:
                measured["error.type"] = str(exc.error.code)
                span.set_attribute("error.type", measured["error.type"])
                span.set_status(self._trace.StatusCode.ERROR, exc.error.message)
                raise
            except Exception as exc:
                measured["error.type"] = type(exc).__qualname__
                span.set_attribute("error.type", measured["error.type"])
                span.set_status(self._trace.StatusCode.ERROR)
                raise
            finally:
                self.duration.record(time.perf_counter() - started, measured)
            if isinstance(result, types.CallToolResult) and result.is_error:
                span.set_attribute("error.type", "tool_error")
                span.set_status(self._trace.StatusCode.ERROR)
            return result

    def _parent(self, ctx: Any) -> Any:
        """The caller's trace: `_meta` first (MCP's own carrier), else the HTTP header; None starts a new trace."""
        meta = ctx.meta or {}
        carrier = {k: meta[k] for k in _TRACE_KEYS if isinstance(meta.get(k), str)}
        if "traceparent" not in carrier and ctx.request is not None:
            carrier = {k: v for k in _TRACE_KEYS if (v := ctx.request.headers.get(k))}
        if "traceparent" not in carrier:
            return None
        context = self.propagator.extract(carrier)
        return context if self._trace.get_current_span(context).get_span_context().is_valid else None

    # ------------------------------------------------------------ the upstream request

    async def upstream_call(self, call: TracedCall, send: Send[R]) -> R:
        identity = {**_identity(call.principal), "gateway.call_id": call.call_id}
        if call.audit_seq is not None:
            identity["gateway.audit.seq"] = call.audit_seq
        self._trace.get_current_span().set_attributes(identity)  # the MCP request's span learns the call
        spec = call.upstream.spec
        attributes = {
            "mcp.method.name": "tools/call",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "server.address": _address(spec.url) or call.upstream.name,
            **identity,
        }
        with self.tracer.start_as_current_span(
            f"tools/call {call.name}",
            kind=self._trace.SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            meta: dict[str, Any] = {}
            self.propagator.inject(meta)  # this span's context, for the upstream's own spans
            try:
                result = await send(meta)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(self._trace.StatusCode.ERROR)
                raise
            if isinstance(result, types.CallToolResult) and result.is_error:
                span.set_attribute("error.type", "tool_error")
                span.set_status(self._trace.StatusCode.ERROR)
            return result

    # ------------------------------------------------------------ the token endpoint and the durable audit write

    def token_handler(self, handler: TokenHandler) -> TokenHandler:
        """`handler` (POST /oauth/token, given the parsed form) in a SERVER span `oauth.token {grant}`.

        The span carries the grant type, and on success the agent and session the token opened (read off the
        issued token's claims, unverified: the gateway has just signed it); on failure `error.type` is the RFC
        6749 error code. Never a secret, an assertion or a token.
        """

        async def traced(request: Any, form: dict[str, Any]) -> Any:
            sent = form.get("grant_type")
            grant = _GRANTS.get(str(sent), "other") if sent else "none"
            attributes: dict[str, Any] = {
                "http.request.method": "POST",
                "url.path": "/oauth/token",
                "oauth.grant_type": sent if grant not in ("other", "none") else grant,
            }
            carrier = {k: v for k in _TRACE_KEYS if (v := request.headers.get(k))}
            parent = self.propagator.extract(carrier) if "traceparent" in carrier else None
            with self.tracer.start_as_current_span(
                f"oauth.token {grant}",
                context=parent,
                kind=self._trace.SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await handler(request, form)
                except Exception as exc:
                    error = getattr(exc, "error", None)  # OAuthError and AuthError carry their RFC 6749 code
                    span.set_attribute("error.type", error if isinstance(error, str) else type(exc).__qualname__)
                    span.set_status(self._trace.StatusCode.ERROR)
                    raise
                span.set_attribute("http.response.status_code", response.status_code)
                span.set_attributes(_issued(getattr(response, "body", b"")))
                return response

        return traced

    async def audit_write(self, write: Callable[[], Awaitable[R]]) -> R:
        """A call's durable audit record, written in an INTERNAL span `audit.write` under the request's span."""
        with self.tracer.start_as_current_span(
            "audit.write",
            kind=self._trace.SpanKind.INTERNAL,
            attributes={"gateway.audit.durable": True},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                record = await write()
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(self._trace.StatusCode.ERROR)
                raise
            if isinstance(record, dict):
                span.set_attributes(
                    {
                        k: v
                        for k, v in (
                            ("gateway.audit.seq", record.get("seq")),
                            ("gateway.audit.event", record.get("event")),
                            ("gateway.call_id", record.get("call_id")),
                        )
                        if isinstance(v, (int, str))
                    }
                )
            return record

    # ------------------------------------------------------------ metrics off the audit records

    def observe(self, record: dict[str, Any]) -> None:
        """Count the tokens an audit record carries (the sink calls this for every record it writes)."""
        if record["event"] in RESULT_EVENTS:  # an admission: its request tokens are counted on its outcome record
            return
        server = record.get("server")
        attributes = {"gen_ai.agent.id": str(record.get("agent") or ""), "gateway.server": str(server or "")}
        if server and record.get("tool"):
            attributes["gen_ai.tool.name"] = f"{server}.{record['tool']}"
        for name, direction in _TOKEN_FIELDS:
            tokens = record.get(name)
            if isinstance(tokens, int) and tokens > 0:
                self.tokens.add(tokens, {**attributes, "gateway.direction": direction})

    def force_flush(self) -> bool:
        """Export every finished span and the metrics now (blocks; run it in a thread from async code)."""
        return bool(self.provider.force_flush()) and bool(self.meters.force_flush())

    def shutdown(self) -> None:
        self.provider.shutdown()
        self.meters.shutdown()


def _identity(principal: Principal) -> dict[str, Any]:
    session = principal.session
    attributes = {"gen_ai.agent.id": principal.agent.id, "gateway.session.id": session.sid}
    if session.on_behalf_of:
        attributes["enduser.id"] = session.on_behalf_of
    if session.task:
        attributes["gateway.task"] = session.task
    return attributes


def _issued(body: bytes) -> dict[str, Any]:
    """The agent (`gen_ai.agent.id`, the OAuth client) and session a token response opened; {} if it is not one."""
    try:
        token = json.loads(body)["access_token"]
        claims = jwt.decode(token, options={"verify_signature": False})
    except (ValueError, KeyError, TypeError, jwt.InvalidTokenError):
        return {}
    attributes = {"gen_ai.agent.id": claims.get("client_id"), "gateway.session.id": claims.get("sid")}
    if claims.get("sub") != claims.get("client_id"):
        attributes["enduser.id"] = claims.get("sub")
    return {k: v for k, v in attributes.items() if isinstance(v, str)}


def _address(url: str | None) -> str | None:
    return urlsplit(url).hostname if url else None
