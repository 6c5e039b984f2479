"""create_app(): the gateway's collaborators wired once, and the Starlette app that serves them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.audit import Audit, build_audit
from gateway.audit.events import Event
from gateway.audit.interrupted import close_interrupted
from gateway.audit.push import OcsfPush
from gateway.audit.records import Fingerprints
from gateway.config.files import (
    ASSERTION_ALGORITHMS,
    AgentSpec,
    GatewayConfig,
    check_login,
    check_workloads,
    load_agents,
    load_templates,
    parse_grant,
)
from gateway.config.live import LiveConfig
from gateway.config.reload import Reloader, ServerEndpoints
from gateway.console import console_routes
from gateway.console.auth import console_key
from gateway.console.deps import ConsoleDeps
from gateway.errors import Unavailable
from gateway.http import usage
from gateway.http.admin import admin_routes
from gateway.http.edge import AuthFailures, Edge, metadata_url
from gateway.http.oauth import CLIENT_CREDENTIALS, JWT_BEARER, TOKEN_EXCHANGE, OAuth, admin_refusal
from gateway.http.transport import mcp_endpoint
from gateway.identity import dpop
from gateway.identity.agents import AgentDirectory
from gateway.identity.dpop import DpopVerifier
from gateway.identity.keys import KeyRing
from gateway.identity.lifecycle import Lifecycle
from gateway.identity.sealing import Sealer
from gateway.identity.sessions import Sessions
from gateway.identity.shared import SharedCredentialDetector
from gateway.identity.stored_keys import key_ring, shared_secrets
from gateway.identity.tokens import Tokens
from gateway.identity.watch import SessionWatch
from gateway.login.deps import LoginDeps
from gateway.login.flow import tool_scopes
from gateway.login.grants import AUTHORIZATION_CODE, REFRESH_TOKEN
from gateway.mcp.exchanges import Exchanges
from gateway.mcp.fanout import Fanout
from gateway.mcp.pipeline import Pipeline
from gateway.mcp.server import Front, SharedCredentials
from gateway.mcp.views import Names, View
from gateway.metrics import METRICS
from gateway.operations import Operations
from gateway.pins.definitions import Pins
from gateway.spend.budgets import Budgets
from gateway.spend.metering import Meter, load_tokenizer
from gateway.store import Store, open_store
from gateway.telemetry import OFF, Off, Tracing, build_telemetry
from gateway.upstream import Upstream, Upstreams
from gateway.upstream.manifests import UpstreamSpec, load_manifests

log = logging.getLogger("gateway.app")

READY_PING_TIMEOUT = 2.0  # seconds an upstream has to answer /readyz's ping before it is reported unresponsive
ACTIVE_SESSIONS = METRICS.gauge("gateway_active_sessions", "Sessions that are active now (read at scrape time)")


@dataclass
class Gateway:
    """Every collaborator, built once per process: what the entry points (serve, the CLI) and create_app hold.

    Components never see it: each is given only the collaborators it uses, here.
    """

    live: LiveConfig
    clock: Callable[[], float]
    store: Store
    audit: Audit
    keys: KeyRing
    tokens: Tokens
    agents: AgentDirectory
    sessions: Sessions
    upstreams: Upstreams
    names: Names
    budgets: Budgets
    pipeline: Pipeline
    fanout: Fanout
    exchanges: Exchanges
    fingerprints: Fingerprints
    meter: Meter
    credential_key: bytes
    shared: SharedCredentialDetector
    pins: Pins
    dpop: DpopVerifier
    lifecycle: Lifecycle
    sealer: Sealer  # opaque envelopes the gateway hands out and gets back (gateway/identity/sealing.py)
    telemetry: Off | Tracing = OFF
    console_key: bytes = b""  # seals the console's session cookies (gateway/console/auth.py)
    config_path: Path | None = None  # gateway.yaml, re-read by hot reload (None: only agents.yaml and manifests)
    reloader: Reloader | None = None  # set by create_app
    ready: anyio.Event = field(default_factory=anyio.Event)  # set once startup has finished
    stopping: anyio.Event = field(default_factory=anyio.Event)  # set when shutdown begins

    @property
    def config(self) -> GatewayConfig:
        """gateway.yaml as last applied (hot reload swaps it)."""
        return self.live.current

    @config.setter
    def config(self, config: GatewayConfig) -> None:
        self.live.current = config

    def operations(self, actor: str) -> Operations:
        """The operator actions, audited with `actor` (the CLI user, the admin API, a console operator)."""
        return Operations(
            actor,
            live=self.live,
            store=self.store,
            audit=self.audit,
            agents=self.agents,
            sessions=self.sessions,
            credential_key=self.credential_key,
            clock=self.clock,
        )

    async def max_session_lifetime(self) -> float:
        """The longest any token can live: how long a retired signing key must keep verifying.

        Raises:
            StoreUnavailable: the store agents' grants cannot be read.
        """
        grants = [spec.grant for spec in self.agents.specs.values()]
        grants += [
            parse_grant(r.grant, f"agent {r.id}: stored grant")
            for r in await self.store.list_agents()
            if r.source == "store" and r.grant
        ]
        return max([self.config.session_defaults.ttl, *(g.budget.session_ttl or 0.0 for g in grants)])


def build_gateway(
    config: GatewayConfig,
    *,
    clock: Callable[[], float] = time.time,
    agents: dict[str, AgentSpec] | None = None,
    manifests: dict[str, UpstreamSpec] | None = None,
    operator: bool = False,
    config_path: Path | None = None,
) -> Gateway:
    """Wire the collaborators from configuration. Nothing is opened or started yet.

    With `operator`, audit records go to the chain operator commands share (a CLI process beside the gateway).

    Call it inside the event loop that will run the gateway (its locks and events belong to it).

    Raises:
        ConfigError: agents.yaml or a manifest is invalid; telemetry is configured without the `otel` extra.
        StoreUnavailable: the keys live in the store (PostgreSQL) and it cannot be reached.
    """
    agent_specs = load_agents(config.agents) if agents is None else agents
    templates = load_templates(config.agents) if agents is None else {}
    check_workloads(config, agent_specs)
    check_login(config)
    specs = load_manifests(config) if manifests is None else manifests
    live = LiveConfig(config)
    store = open_store(config)
    keys = key_ring(config, store)
    secrets = shared_secrets(config, store)
    telemetry = OFF if operator else build_telemetry(config.telemetry, config.instance)
    # Token counts go to telemetry read off the records, like the Prometheus series.
    observe = telemetry.observe if isinstance(telemetry, Tracing) else None
    audit = build_audit(config, keys, store, clock, operator=operator, observe=observe)
    tokens = Tokens(keys, config.public_url, clock)
    directory = AgentDirectory(store, agent_specs, templates)
    sessions = Sessions(store, directory, tokens, audit, config.session_defaults, clock)
    pins = Pins(specs, audit, require_pins=config.require_pins)
    upstreams = Upstreams(specs, stderr_dir=config.state_dir / "logs", quarantine=pins.settle)
    budgets = Budgets(store, audit, clock, denials_per_minute=config.audit.denials_per_minute)
    fingerprints = Fingerprints(secrets["fingerprint"])
    sealer = Sealer(secrets["state"])  # envelopes handed to clients: paused calls' requestState, sign-in cookies
    meter = Meter(load_tokenizer(config.metering))
    gateway = Gateway(
        live=live,
        clock=clock,
        store=store,
        audit=audit,
        keys=keys,
        tokens=tokens,
        agents=directory,
        sessions=sessions,
        upstreams=upstreams,
        names=Names(upstreams),
        budgets=budgets,
        pipeline=Pipeline(budgets, audit, fingerprints, meter, telemetry),
        fanout=Fanout(),
        exchanges=Exchanges(sealer, clock),
        sealer=sealer,
        fingerprints=fingerprints,
        meter=meter,
        credential_key=secrets["credential"],
        shared=SharedCredentialDetector(config.shared_credentials),
        pins=pins,
        lifecycle=Lifecycle(live, store, directory, sessions, audit, clock),
        config_path=config_path,
        dpop=DpopVerifier(store, clock, config.dpop, secrets["state"] if config.dpop_nonce else None),
        telemetry=telemetry,
        console_key=console_key(secrets["state"]),
    )
    return gateway


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI app: MCP endpoints behind the edge, plus metadata and health routes."""
    config = gateway.config
    front = Front(
        gateway.pipeline,
        gateway.exchanges,
        gateway.fanout,
        SharedCredentials(gateway.shared, gateway.audit),
        gateway.sessions.notify_ended,
        gateway.telemetry,
        id_jag=any(provider.id_jag for provider in config.identity_providers),
    )
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=False,  # the edge checks Host and Origin before anything else
    )
    views = {"/mcp": View(gateway.upstreams, gateway.names, None)}
    views.update(
        {f"/servers/{name}/mcp": View(gateway.upstreams, gateway.names, name) for name in gateway.upstreams.servers}
    )
    endpoints = {path: mcp_endpoint(front, view, security) for path, view in views.items()}
    failures = AuthFailures(gateway.audit)
    scopes = tool_scopes(gateway.agents.templates) if config.login is not None else []
    edge = Edge(
        config,
        sessions=gateway.sessions,
        tokens=gateway.tokens,
        dpop=gateway.dpop,
        audit=gateway.audit,
        fanout=gateway.fanout,
        failures=failures,
        apps=endpoints,
        api={usage.PATH: usage.UsageEndpoint(gateway.live, gateway.audit, gateway.budgets)},
        scope=" ".join(scopes) or None,
    )
    login = LoginDeps(
        config=config,
        store=gateway.store,
        audit=gateway.audit,
        agents=gateway.agents,
        sessions=gateway.sessions,
        sealer=gateway.sealer,
        credential_key=gateway.credential_key,
        clock=gateway.clock,
    )
    oauth = OAuth(
        gateway.live,
        login,
        dpop=gateway.dpop,
        telemetry=gateway.telemetry,
        failures=failures,
        servers=gateway.upstreams.servers,
    )
    console, console_close = console_routes(
        ConsoleDeps(
            live=gateway.live,
            store=gateway.store,
            audit=gateway.audit,
            keys=gateway.keys,
            upstreams=gateway.upstreams,
            pins=gateway.pins,
            operations=gateway.operations,
            failures=failures,
            hosts=edge.hosts,
            origins=edge.origins,
            console_key=gateway.console_key,
            stopping=gateway.stopping,
            clock=gateway.clock,
        ),
        oauth.idps,
    )
    reloader = gateway.reloader = Reloader(
        gateway.live,
        agents=gateway.agents,
        sessions=gateway.sessions,
        upstreams=gateway.upstreams,
        names=gateway.names,
        pins=gateway.pins,
        audit=gateway.audit,
        clock=gateway.clock,
        endpoints=ServerEndpoints(gateway.upstreams, gateway.names, front, security, edge),
        config_path=gateway.config_path,
    )

    watch = SessionWatch(
        store=gateway.store,
        sessions=gateway.sessions,
        keys=gateway.keys,
        budgets=gateway.budgets,
        lifecycle=gateway.lifecycle,
        clock=gateway.clock,
        tracked=lambda: edge.tracked_sids() | gateway.fanout.session_sids() | gateway.upstreams.session_sids(),
        prune=edge.prune_mcp_sessions,
    )
    ocsf = config.telemetry.ocsf  # the SIEM's own copy of the stream, from the cursor on
    push = OcsfPush(ocsf, config.audit.path, config.state_dir) if ocsf is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Each long-lived component runs in its own `run()`; they stop in the reverse order."""
        async with contextlib.AsyncExitStack() as stack:
            await gateway.store.open()
            stack.push_async_callback(gateway.store.close)
            stack.push_async_callback(anyio.to_thread.run_sync, gateway.telemetry.shutdown)  # exports what is left
            gateway.keys.load()
            await stack.enter_async_context(gateway.audit.run())
            stack.push_async_callback(oauth.close)
            stack.push_async_callback(console_close)
            stack.push_async_callback(oauth.workloads.close)
            await gateway.agents.sync(gateway.clock())
            await close_interrupted(gateway.audit)  # calls a crash of the previous run left without an outcome
            await gateway.audit.emit(
                Event.GATEWAY_STARTED,
                public_url=config.public_url,
                servers=sorted(gateway.upstreams.servers),
                tokenizer=gateway.meter.tokenizer.name,
            )
            for name, upstream in sorted(gateway.upstreams.servers.items()):
                if upstream.spec.unsandboxed:  # the operator's explicit `sandbox: off`: never a silent downgrade
                    log.warning("stdio server %s runs unsandboxed: its manifest says sandbox: off", name)
                    await gateway.audit.emit(
                        Event.UPSTREAM_UNSANDBOXED, durable=True, server=name, reason="sandbox: off in its manifest"
                    )
            gateway.upstreams.on_change(_on_change(gateway))
            gateway.upstreams.on_update(gateway.fanout.updated)
            gateway.upstreams.on_log(gateway.fanout.log)
            await stack.enter_async_context(gateway.upstreams.run())
            gateway.names.rebuild(strict=True)
            for endpoint in endpoints.values():
                await stack.enter_async_context(endpoint.run())
            stack.push_async_callback(_stopped, gateway)  # once everything entered below has stopped
            gateway.sessions.on_end(_on_session_end(gateway, edge))
            await stack.enter_async_context(gateway.exchanges.run())
            await stack.enter_async_context(watch.run())
            await stack.enter_async_context(failures.run())
            await stack.enter_async_context(gateway.pins.run())
            if push is not None:
                await stack.enter_async_context(push.run())
            await stack.enter_async_context(reloader.run())
            stack.callback(gateway.stopping.set)  # first at shutdown: the console's event streams end
            gateway.ready.set()
            yield

    dpop_offered = _dpop_offered(config, gateway.agents.specs)
    routes = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz(gateway)),
        Route("/metrics", _metrics(gateway, failures)),
        Route("/.well-known/oauth-authorization-server", _as_metadata(config, dpop_offered, scopes)),
        Route("/jwks.json", _jwks(gateway)),
        Route(
            "/.well-known/oauth-protected-resource{path:path}",
            _pr_metadata(config, edge.resources, dpop_offered, scopes),
        ),
        *oauth.routes(),
        *admin_routes(gateway.live, failures, gateway.operations),
        console,
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_EdgeMiddleware, edge=edge)])
    app.state.gateway = gateway
    app.state.edge = edge
    return app


class _EdgeMiddleware:
    """Puts the edge in front of the router: MCP paths go to the edge, the rest fall through."""

    def __init__(self, app: ASGIApp, edge: Edge) -> None:
        self.app = app
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.edge.serve(scope, receive, send, self.app)


def _on_change(gateway: Gateway) -> Callable[[str, str], Any]:
    async def changed(server: str, kind: str) -> None:
        if kind == "tools" or kind == "prompts":
            gateway.names.rebuild()
        await gateway.fanout.changed(server, kind)

    return changed


def _on_session_end(gateway: Gateway, edge: Edge) -> Callable[[str], Any]:
    async def ended(sid: str) -> None:
        gateway.pipeline.session_ended(sid)  # first: its calls in flight record `revoked`, not `cancelled`
        await edge.end_session(sid)
        gateway.fanout.drop_session(sid)
        gateway.upstreams.release(sid)
        gateway.budgets.forget(sid)

    return ended


async def _stopped(gateway: Gateway) -> None:
    """The last record of this run, once the components' tasks have stopped (buffered settlements first)."""
    with anyio.CancelScope(shield=True):
        await gateway.budgets.close()
        await gateway.audit.emit(Event.GATEWAY_STOPPED)


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _readyz(gateway: Gateway) -> Callable[[Request], Any]:
    async def readyz(request: Request) -> Response:
        problems: dict[str, str] = {}
        try:
            await gateway.store.ping()
        except Unavailable as exc:
            problems["store"] = str(exc)
        try:
            await gateway.audit.probe()
        except Unavailable as exc:
            problems["audit"] = str(exc)
        upstreams: dict[str, str] = {}

        async def check(name: str, upstream: Upstream) -> None:
            upstreams[name] = await upstream.liveness(READY_PING_TIMEOUT)

        async with anyio.create_task_group() as tg:
            for name, upstream in gateway.upstreams.servers.items():
                tg.start_soon(check, name, upstream)
        upstreams = dict(sorted(upstreams.items()))
        body = {"status": "not ready" if problems else "ready", "problems": problems, "upstreams": upstreams}
        return JSONResponse(body, status_code=503 if problems else 200)

    return readyz


def _metrics(gateway: Gateway, failures: AuthFailures) -> Callable[[Request], Any]:
    async def metrics(request: Request) -> Response:
        if not gateway.config.metrics_public:
            refusal = await admin_refusal(request, gateway.config.admin_token, failures)
            if refusal is not None:
                return refusal
        try:
            active = await gateway.store.list_sessions(state="active", now=gateway.clock())
            ACTIVE_SESSIONS.set(value=len(active))
        except Unavailable as exc:
            log.warning("metrics: active sessions unknown: %s", exc)
        return Response(METRICS.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return metrics


def _dpop_offered(config: GatewayConfig, agents: dict[str, AgentSpec]) -> bool:
    """Whether any agent can get a DPoP-bound token (gateway.yaml `dpop`, or an agent's own, not off)."""
    return any(mode != "off" for mode in (config.dpop, *(spec.dpop for spec in agents.values() if spec.dpop)))


def _as_metadata(config: GatewayConfig, dpop_offered: bool, scopes: list[str]) -> Callable[[Request], Any]:
    """RFC 8414. `authorization_endpoint` is always listed (every OAuth client's schema requires it, even for
    client_credentials); without `login:` it answers that sign-in is not configured."""
    base = config.public_url
    jwt_bearer = bool(config.workload_issuers) or any(p.id_jag for p in config.identity_providers)
    login = config.login is not None
    sign_in = [AUTHORIZATION_CODE, REFRESH_TOKEN] if login else []
    document: dict[str, Any] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "jwks_uri": f"{base}/jwks.json",
        "grant_types_supported": [*sign_in, CLIENT_CREDENTIALS, TOKEN_EXCHANGE, *([JWT_BEARER] if jwt_bearer else [])],
        "token_endpoint_auth_methods_supported": [
            *(["none"] if login else []),
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),  # RFC 8414 §2
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "response_types_supported": ["code"] if login else [],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": login and bool(config.clients.metadata_documents),
    }
    if scopes:
        document["scopes_supported"] = scopes
    if login and config.clients.dynamic_registration:
        document["registration_endpoint"] = f"{base}/oauth/register"
    if dpop_offered:
        document["dpop_signing_alg_values_supported"] = list(dpop.ALGORITHMS)

    async def metadata(request: Request) -> Response:
        return JSONResponse(document)

    return metadata


def _pr_metadata(
    config: GatewayConfig, paths: set[str], dpop_offered: bool, scopes: list[str]
) -> Callable[[Request], Any]:
    proof: dict[str, Any] = {}
    if dpop_offered:  # RFC 9728 §2
        proof = {
            "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
            "dpop_bound_access_tokens_required": config.dpop == "required",
        }

    async def metadata(request: Request) -> Response:
        path = request.path_params["path"] or ""
        if path not in paths and path != "":
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(
            {
                **proof,
                "resource": f"{config.public_url}{path}",
                "authorization_servers": [config.public_url],
                "bearer_methods_supported": ["header"],
                "resource_signing_alg_values_supported": ["EdDSA"],
                "resource_name": "MCP identity gateway",
                **({"scopes_supported": scopes} if scopes else {}),
            }
        )

    return metadata


def _jwks(gateway: Gateway) -> Callable[[Request], Any]:
    async def jwks(request: Request) -> Response:
        return JSONResponse(gateway.keys.jwks(gateway.clock()))

    return jwks


__all__ = ["Gateway", "build_gateway", "create_app", "metadata_url"]
