"""The HTTP edge of the MCP endpoints: Host/Origin, bearer authentication, session binding.

Runs before the SDK transport sees a request, in the order of DESIGN.md's
pipeline. A request that passes carries its `Principal` in the ASGI scope; a
request that fails gets the one answer the Errors table fixes for it. A
DPoP-bound token (`cnf.jkt`) is accepted only with the DPoP scheme and a fresh
proof for this very request, checked on every request: the verified-token cache
holds claims, never proofs. Every request of an agent session runs in a cancel
scope registered under the session, so ending the session also ends its open
streams.

Handshake-era MCP sessions (`Mcp-Session-Id`) are bound to the agent session
that opened them and counted against `limits` per agent session and per agent:
the SDK's own cap (10,000 per endpoint) is shared by everyone, so without these
one agent could take it all. When an agent session ends, its MCP sessions are
terminated in the SDK too, which frees their room at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import structlog
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.events import Event
from gateway.errors import AuthError, Unavailable
from gateway.http.headers import RequestHeaders
from gateway.http.transport import McpEndpoint
from gateway.identity import dpop
from gateway.identity.principal import PRINCIPAL, Principal
from gateway.identity.tokens import TokenClaims
from gateway.mcp.scopes import SessionScopes

if TYPE_CHECKING:
    from gateway.audit import Audit
    from gateway.config.files import GatewayConfig
    from gateway.identity.dpop import DpopVerifier
    from gateway.identity.sessions import Sessions
    from gateway.identity.tokens import Tokens
    from gateway.mcp.fanout import Fanout

log = logging.getLogger("gateway.edge")
requests_log = logging.getLogger("gateway.request")  # the canonical line: one per request served here

TOO_MANY_MCP_SESSIONS = -32013  # JSON-RPC error code of the HTTP 429 that refuses an MCP session beyond `limits`
_HANDSHAKE = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)


@dataclass(frozen=True, slots=True)
class _McpSession:
    """Who opened a handshake-era MCP session, and on which endpoint it lives."""

    sid: str
    agent: str
    endpoint: McpEndpoint


# Names that reach only this machine. DNS rebinding needs a name that resolves elsewhere first, so
# accepting these for a loopback public_url opens nothing.
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def metadata_url(public_url: str, path: str) -> str:
    """RFC 9728 §3.1: the well-known URI inserted between the host and the resource's path."""
    return f"{public_url}/.well-known/oauth-protected-resource{path}"


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _with_header(send: Send, name: bytes, value: str | None) -> Send:
    """`send`, adding one header to the response start (unchanged when `value` is None)."""
    if value is None:
        return send
    encoded = value.encode("latin-1")

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, encoded)]}
        await send(message)

    return wrapped


class AuthFailures:
    """Failed authentications, recorded in aggregate: the first per source and reason per window at once,
    the rest counted and written as one record per source when the window closes.

    Reasons come from small fixed sets (never a client-supplied value), so a flood costs a bounded
    number of records.
    """

    def __init__(self, audit: Audit, window: float = 60.0) -> None:
        self.audit = audit
        self.window = window
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    async def failed(self, remote: str, reason: str) -> None:
        counts = self._counts[remote]
        counts[reason] += 1
        if counts[reason] == 1:
            await self._emit(remote, {reason: 1}, first=True)

    async def flush(self) -> None:
        pending, self._counts = self._counts, defaultdict(lambda: defaultdict(int))
        for remote, counts in pending.items():
            if any(count > 1 for count in counts.values()):
                await self._emit(remote, dict(counts), first=False)

    async def _emit(self, remote: str, reasons: dict[str, int], *, first: bool) -> None:
        try:
            await self.audit.emit(
                Event.AUTH_FAILED,
                remote_addr=remote,
                count=sum(reasons.values()),
                reasons=reasons,
                window_s=self.window,
                reason=next(iter(reasons)) if first else "aggregate",
            )
        except Unavailable:
            log.warning("auth.failed could not be audited")

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Close a window every `window` seconds until exit, then write what the last one counted."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._windows)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.flush()

    async def _windows(self) -> None:
        while True:
            await anyio.sleep(self.window)
            await self.flush()


class Edge:
    """ASGI front door for `/mcp`, `/servers/<name>/mcp` and the session-token API (`/v1/...`)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        sessions: Sessions,
        tokens: Tokens,
        dpop: DpopVerifier,
        audit: Audit,
        fanout: Fanout,
        failures: AuthFailures,
        apps: Mapping[str, ASGIApp],
        api: Mapping[str, ASGIApp] | None = None,
        scope: str | None = None,
    ) -> None:
        self.config = config  # only fields that never reload: public_url, listen, allowed_*, limits
        self.sessions = sessions
        self.tokens = tokens
        self.dpop = dpop
        self.audit = audit
        self.fanout = fanout
        self.failures = failures
        self.resources = set(apps)  # MCP paths: each has its own RFC 9728 document
        self.apps = {**apps, **(api or {})}  # path -> the SDK transport app of that view, or an API app
        self.scope = scope  # the `scope` a 401 names when sign-in templates define tool scopes
        public = urlsplit(config.public_url)
        listen = config.listen
        self.hosts = {public.netloc, f"{listen.host}:{listen.port}", *config.allowed_hosts}
        if public.port is None:
            self.hosts.add(f"{public.hostname}:{443 if public.scheme == 'https' else 80}")
        if public.hostname in ("127.0.0.1", "localhost", "::1"):  # answer to every loopback name of the port
            port = public.port or (443 if public.scheme == "https" else 80)
            self.hosts.update(f"{name}:{port}" for name in _LOOPBACK_NAMES)
        self.origins = {f"{public.scheme}://{public.netloc}", *config.allowed_origins}
        self._scopes = SessionScopes()  # the requests a session's end cuts
        self._mcp_sessions: dict[str, _McpSession] = {}  # Mcp-Session-Id -> who opened it
        self._opening_sessions: Counter[str] = Counter()  # agent sid -> MCP sessions being opened now
        self._opening_agents: Counter[str] = Counter()  # agent id -> MCP sessions being opened now

    def tracked_sids(self) -> set[str]:
        """Agent sessions with an open request or an MCP session here: their end must be noticed."""
        return {*self._scopes.sids(), *(owned.sid for owned in self._mcp_sessions.values())}

    def prune_mcp_sessions(self) -> None:
        """Forget MCP sessions the SDK ended on its own (idle timeout), and their listeners."""
        self._held(lambda owned: True, prune=True)

    async def end_session(self, sid: str) -> None:
        """The session ended: cut its open streams and in-flight requests, and terminate its MCP sessions, now."""
        self._scopes.cancel(sid)
        for mcp_session, owned in list(self._mcp_sessions.items()):
            if owned.sid == sid:
                self._forget(mcp_session)
                await owned.endpoint.terminate(mcp_session)

    async def serve(self, scope: Scope, receive: Receive, send: Send, fallback: ASGIApp) -> None:
        """Serve an MCP or session-token API path; hand anything else to `fallback` (the router)."""
        path = scope.get("path", "")
        app = self.apps.get(path) or self.apps.get(path.rstrip("/")) if scope["type"] == "http" else None
        if app is None:
            await fallback(scope, receive, send)
            return
        await self._logged(app, path.rstrip("/"), scope, receive, send)

    async def _logged(self, app: ASGIApp, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve with this request's context bound to every log line written meanwhile (`request_id` now;
        `agent`, `sid` and `mcp_session` once authenticated), then write its one canonical line."""
        structlog.contextvars.clear_contextvars()  # nothing carried over from what this task served before
        structlog.contextvars.bind_contextvars(request_id=secrets.token_hex(8))
        if not requests_log.isEnabledFor(logging.INFO):  # no canonical line: nothing to time or watch
            await self._serve(app, path, scope, receive, send)
            return
        status, opened = 0, None  # status 0: no answer was started (the client went away, or the request was cut)

        async def answered(message: Message) -> None:
            nonlocal status, opened
            if message["type"] == "http.response.start":
                status = message["status"]
                opened = next(
                    (v.decode("latin-1") for k, v in message.get("headers", []) if k == b"mcp-session-id"), None
                )
            await send(message)

        started = time.perf_counter()
        try:
            await self._serve(app, path, scope, receive, answered)
        finally:
            bound = structlog.contextvars.get_contextvars()
            requests_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "agent": bound.get("agent"),
                    "sid": bound.get("sid"),
                    "mcp_session": bound.get("mcp_session") or opened,
                },
            )

    async def _serve(self, app: ASGIApp, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = RequestHeaders.of(scope)
        host = headers.host
        if host is None or host not in self.hosts:
            await send_json(
                send,
                421,
                {
                    "error": "misdirected_request",
                    "error_description": (
                        "Host not accepted: use public_url's host, or add this host (host:port) to allowed_hosts "
                        "in gateway.yaml"
                    ),
                },
            )
            return
        origin = headers.origin
        if origin is not None and origin not in self.origins:
            await send_json(send, 403, {"error": "forbidden", "error_description": "Origin not allowed"})
            return
        remote = scope["client"][0] if scope.get("client") else "unknown"
        authorization = headers.authorization or ""
        scheme, _, token = authorization.partition(" ")
        scheme, token = scheme.lower(), token.strip()
        try:
            if scheme not in ("bearer", "dpop") or not token:
                raise AuthError("missing bearer token")
            verified = await self._possession(scope, scheme, token, headers.dpop)
            principal = await self.sessions.authenticate(token, remote_addr=remote, claims=verified)
            if principal.token.jkt is None and self.dpop.mode(principal.agent.dpop) == "required":
                raise AuthError("this agent's tokens must be DPoP-bound: get one with a DPoP proof", error=dpop.INVALID)
            if not self.audit.healthy:
                await self.audit.probe(refusing=True)  # a refusal here is counted in audit.recovered
        except AuthError as exc:
            if exc.error != dpop.USE_NONCE:  # asking for a nonce is the protocol, not a failure
                await self.failures.failed(remote, exc.reason)
            await self._unauthorized(send, path, exc.reason, error=exc.error)
            return
        except Unavailable as exc:
            await send_json(
                send, 503, {"error": "temporarily_unavailable", "error_description": str(exc)}, {"retry-after": "1"}
            )
            return
        mcp_session = headers.mcp_session_id
        structlog.contextvars.bind_contextvars(agent=principal.agent.id, sid=principal.sid, mcp_session=mcp_session)
        owned = self._mcp_sessions.get(mcp_session) if mcp_session is not None else None
        if owned is not None and owned.sid != principal.sid:
            # Bound to another agent session: answer exactly as if it did not exist.
            await send_json(
                send, 404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
            )
            return
        opening = isinstance(app, McpEndpoint) and mcp_session is None and _may_open_session(scope, headers)
        if opening:
            refusal = self._mcp_session_refusal(principal)
            if refusal is not None:
                log.warning(
                    "refused an MCP session to agent %s, session %s: %s", principal.agent.id, principal.sid, refusal
                )
                await send_json(
                    send,
                    429,
                    {"jsonrpc": "2.0", "id": None, "error": {"code": TOO_MANY_MCP_SESSIONS, "message": refusal}},
                )
                return
        claims = principal.token
        scope[PRINCIPAL] = principal
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token=token,
                client_id=claims.agent,
                scopes=[],
                expires_at=int(claims.expires_at),
                subject=claims.subject,
                claims={"iss": self.config.public_url, "sid": claims.sid},
            )
        )
        scope["auth"] = AuthCredentials([])
        ending = mcp_session if scope["method"] == "DELETE" else None
        nonce = self.dpop.nonce() if scheme == "dpop" else None
        if not opening:
            await self._run(
                app,
                principal.sid,
                scope,
                receive,
                _with_header(self._binding(send, None, ending), b"dpop-nonce", nonce),
            )
            return
        assert isinstance(app, McpEndpoint)
        opener = _McpSession(principal.sid, principal.agent.id, app)
        # Counted from admission on, so concurrent initializes cannot race past the limits.
        self._opening_sessions[opener.sid] += 1
        self._opening_agents[opener.agent] += 1
        try:
            await self._run(
                app,
                principal.sid,
                scope,
                receive,
                _with_header(self._binding(send, opener, None), b"dpop-nonce", nonce),
            )
        finally:
            self._opened(opener)

    async def _possession(self, scope: Scope, scheme: str, token: str, proofs: list[str]) -> TokenClaims:
        """A bound token comes with the DPoP scheme and a proof for this very request; an unbound one as Bearer.
        Returns the token's verified claims, so they are not verified again.

        Raises:
            AuthError: `invalid_dpop_proof` for a missing or bad proof; `invalid_token` for a bad token.
            StoreUnavailable: the proof replay cache cannot be consulted.
        """
        claims = self.tokens.verify(token)
        if claims.jkt is None:
            if scheme == "dpop":
                raise AuthError("the token is not DPoP-bound: use the Bearer scheme")
            return claims
        if scheme != "dpop":
            raise AuthError("the token is DPoP-bound: use the DPoP scheme with a proof", error=dpop.INVALID)
        url = f"{self.config.public_url}{scope.get('path', '')}"
        await self.dpop.verify_holder(proofs, method=scope["method"], url=url, access_token=token, jkt=claims.jkt)
        return claims

    def _opened(self, opener: _McpSession) -> None:
        """An admitted open is over (it became a session, or failed): it no longer counts as pending."""
        for pending, key in ((self._opening_sessions, opener.sid), (self._opening_agents, opener.agent)):
            pending[key] -= 1
            if pending[key] <= 0:
                del pending[key]

    def _mcp_session_refusal(self, principal: Principal) -> str | None:
        """Why `principal` may not open another MCP session now (`limits` in gateway.yaml), or None."""
        limits = self.config.limits
        sid, agent = principal.sid, principal.agent.id
        bounds: tuple[tuple[str, str, int, Callable[[_McpSession], bool], int], ...] = (
            (
                "this agent session",
                "mcp_sessions_per_session",
                limits.mcp_sessions_per_session,
                lambda owned: owned.sid == sid,
                self._opening_sessions[sid],
            ),
            (
                f"agent {agent!r}",
                "mcp_sessions_per_agent",
                limits.mcp_sessions_per_agent,
                lambda owned: owned.agent == agent,
                self._opening_agents[agent],
            ),
        )
        for whose, setting, limit, mine, pending in bounds:
            held = self._held(mine) + pending
            if held >= limit:
                held = self._held(mine, prune=True) + pending
            if held >= limit:
                return (
                    f"Too many MCP sessions: {whose} holds {held} (limits.{setting} = {limit} in gateway.yaml); "
                    "end one (HTTP DELETE with its Mcp-Session-Id) or reuse it"
                )
        return None

    def _held(self, mine: Callable[[_McpSession], bool], *, prune: bool = False) -> int:
        """How many live MCP sessions `mine` selects; with `prune`, first forget those the SDK already ended
        (idle timeout), which the edge is not told about."""
        held = 0
        for mcp_session, owned in list(self._mcp_sessions.items()):
            if mine(owned):
                if prune and not owned.endpoint.has_session(mcp_session):
                    self._forget(mcp_session)
                else:
                    held += 1
        return held

    def _binding(self, send: Send, opener: _McpSession | None, ending: str | None) -> Send:
        """Remember which agent session a new MCP session belongs to; forget one its client terminated.
        `send` itself when the request does neither (most requests)."""
        if opener is None and ending is None:
            return send

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                if ending is not None and message["status"] < 300:
                    self._forget(ending)
                if opener is not None:
                    for key, value in message.get("headers", []):
                        if key.lower() == b"mcp-session-id":
                            self._mcp_sessions.setdefault(value.decode("latin-1"), opener)
            await send(message)

        return wrapped

    def _forget(self, mcp_session: str) -> None:
        """An MCP session ended: its binding and its listener (and their subscriptions) go with it."""
        self._mcp_sessions.pop(mcp_session, None)
        self.fanout.forget_mcp_session(mcp_session)

    async def _run(self, app: ASGIApp, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request in a scope its session's end cancels; cut before any answer, it gets the 401."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with self._scopes.open(sid) as cancel:
            await app(scope, receive, tracked)
        if cancel.cancelled_caught and not started:  # only end_session cancels it
            await self._unauthorized(send, scope.get("path", "").rstrip("/"), "session ended")

    async def _unauthorized(self, send: Send, path: str, reason: str, *, error: str = "invalid_token") -> None:
        url = metadata_url(self.config.public_url, path if path in self.resources else "")
        if error in (dpop.INVALID, dpop.USE_NONCE):
            headers = {
                "www-authenticate": dpop.challenge(reason, error=error, resource_metadata=url),
                **self.dpop.nonce_header(),
            }
            await send_json(send, 401, {"error": error, "error_description": reason}, headers)
            return
        description = reason.replace('"', "'")
        challenge = f'Bearer error="invalid_token", error_description="{description}", resource_metadata="{url}"'
        if self.scope:  # MCP authorization: the scope a sign-in should ask for
            challenge += f', scope="{self.scope}"'
        await send_json(
            send, 401, {"error": "invalid_token", "error_description": reason}, {"www-authenticate": challenge}
        )


def _may_open_session(scope: Scope, headers: RequestHeaders) -> bool:
    """A POST without `Mcp-Session-Id` in the handshake era (no or a handshake-era protocol header): the SDK
    opens a new MCP session for it. 2026-07-28 requests are sessionless."""
    if scope["method"] != "POST":
        return False
    version = headers.protocol_version
    return version is None or version in _HANDSHAKE
