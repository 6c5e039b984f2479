"""The HTTP edge of the MCP endpoints: Host/Origin, bearer authentication, session binding.

Runs before the SDK transport sees a request, in the order of DESIGN.md's
pipeline. A request that passes carries its `Principal` in the ASGI scope; a
request that fails gets the one answer the Errors table fixes for it. Every
request of an agent session runs in a cancel scope registered under the
session, so ending the session also ends its open streams.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import AuthError, Unavailable
from gateway.front import PRINCIPAL

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.edge")


def metadata_url(public_url: str, path: str) -> str:
    """RFC 9728 §3.1: the well-known URI inserted between the host and the resource's path."""
    return f"{public_url}/.well-known/oauth-protected-resource{path}"


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class AuthFailures:
    """Failed authentications, recorded in aggregate: the first per source and reason per window at once,
    the rest counted and written as one record per source when the window closes.

    Reasons come from small fixed sets (never a client-supplied value), so a flood costs a bounded
    number of records.
    """

    def __init__(self, gateway: Gateway, window: float = 60.0) -> None:
        self.gw = gateway
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
            await self.gw.audit.emit(
                "auth.failed", remote_addr=remote, count=sum(reasons.values()), reasons=reasons,
                window_s=self.window, reason=next(iter(reasons)) if first else "aggregate",
            )
        except Unavailable:
            log.warning("auth.failed could not be audited")

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.window)
            await self.flush()


class Edge:
    """ASGI front door for `/mcp`, `/servers/<name>/mcp` and the session-token API (`/v1/...`)."""

    def __init__(self, gateway: Gateway, apps: Mapping[str, ASGIApp], api: Mapping[str, ASGIApp] | None = None) -> None:
        self.gw = gateway
        self.resources = set(apps)  # MCP paths: each has its own RFC 9728 document
        self.apps = {**apps, **(api or {})}  # path -> the SDK transport app of that view, or an API app
        self.fallback: ASGIApp | None = None  # the router, set when the middleware stack is built
        public = urlsplit(gateway.config.public_url)
        listen = gateway.config.listen
        self.hosts = {public.netloc, f"{listen.host}:{listen.port}", *gateway.config.allowed_hosts}
        if public.port is None:
            self.hosts.add(f"{public.hostname}:{443 if public.scheme == 'https' else 80}")
        self.origins = {f"{public.scheme}://{public.netloc}", *gateway.config.allowed_origins}
        self._scopes: dict[str, set[anyio.CancelScope]] = defaultdict(set)
        self._mcp_sessions: dict[str, str] = {}  # Mcp-Session-Id -> gateway sid
        self.failures = AuthFailures(gateway)

    def active_sids(self) -> list[str]:
        return list(self._scopes)

    async def end_session(self, sid: str) -> None:
        """The session ended: cut its open streams and in-flight requests now."""
        for scope in self._scopes.pop(sid, set()):
            scope.cancel()
        for mcp_session, owner in list(self._mcp_sessions.items()):
            if owner == sid:
                self._forget(mcp_session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        app = self.apps.get(path) or self.apps.get(path.rstrip("/")) if scope["type"] == "http" else None
        if app is None:
            assert self.fallback is not None
            await self.fallback(scope, receive, send)
            return
        await self._serve(app, path.rstrip("/"), scope, receive, send)

    async def _serve(self, app: ASGIApp, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        host = _header(scope, b"host")
        if host is None or host not in self.hosts:
            await send_json(send, 421, {"error": "misdirected_request", "error_description": "Host not accepted"})
            return
        origin = _header(scope, b"origin")
        if origin is not None and origin not in self.origins:
            await send_json(send, 403, {"error": "forbidden", "error_description": "Origin not allowed"})
            return
        remote = scope["client"][0] if scope.get("client") else "unknown"
        authorization = _header(scope, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("missing bearer token")
            principal = await self.gw.sessions.authenticate(token.strip(), remote_addr=remote)
            if not self.gw.audit.healthy:
                await self.gw.audit.probe()
        except AuthError as exc:
            await self.failures.failed(remote, exc.reason)
            await self._unauthorized(send, path, exc.reason)
            return
        except Unavailable as exc:
            await send_json(send, 503, {"error": "temporarily_unavailable", "error_description": str(exc)},
                            {"retry-after": "1"})
            return
        mcp_session = _header(scope, b"mcp-session-id")
        if mcp_session is not None and self._mcp_sessions.get(mcp_session, principal.sid) != principal.sid:
            # Bound to another agent session: answer exactly as if it did not exist.
            await send_json(send, 404, {"jsonrpc": "2.0", "id": None,
                                        "error": {"code": -32600, "message": "Session not found"}})
            return
        claims = principal.token
        scope[PRINCIPAL] = principal
        scope["user"] = AuthenticatedUser(
            AccessToken(token=token.strip(), client_id=claims.agent, scopes=[], expires_at=int(claims.expires_at),
                        subject=claims.subject, claims={"iss": self.gw.config.public_url, "sid": claims.sid})
        )
        scope["auth"] = AuthCredentials([])
        ending = mcp_session if scope["method"] == "DELETE" else None
        await self._run(app, principal.sid, scope, receive, self._binding(send, principal.sid, ending))

    def _binding(self, send: Send, sid: str, ending: str | None) -> Send:
        """Remember which agent session a new MCP session belongs to; forget one its client terminated."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                if ending is not None and message["status"] < 300:
                    self._forget(ending)
                for key, value in message.get("headers", []):
                    if key.lower() == b"mcp-session-id" and ending is None:
                        self._mcp_sessions.setdefault(value.decode("latin-1"), sid)
            await send(message)

        return wrapped

    def _forget(self, mcp_session: str) -> None:
        """An MCP session ended: its binding and its listener (and their subscriptions) go with it."""
        self._mcp_sessions.pop(mcp_session, None)
        self.gw.fanout.forget_mcp_session(mcp_session)

    async def _run(self, app: ASGIApp, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cancel:
            self._scopes[sid].add(cancel)
            try:
                await app(scope, receive, send)
            finally:
                live = self._scopes.get(sid)
                if live is not None:
                    live.discard(cancel)
                    if not live:
                        del self._scopes[sid]

    async def _unauthorized(self, send: Send, path: str, reason: str) -> None:
        url = metadata_url(self.gw.config.public_url, path if path in self.resources else "")
        description = reason.replace('"', "'")
        challenge = f'Bearer error="invalid_token", error_description="{description}", resource_metadata="{url}"'
        await send_json(send, 401, {"error": "invalid_token", "error_description": reason},
                        {"www-authenticate": challenge})

