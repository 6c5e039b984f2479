"""Helpers for identity tests: OAuth requests, agent secrets, and a real JWKS server for a test IdP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.upstream.http_client import mcp_http_client
from tests.support.cli import run_cli
from tests.support.harness import Harness, free_port

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


async def cli(gw: Harness, *argv: str, status: int = 0) -> str:
    """Run an operator command the way a shell would (its own event loop, its own store connection)."""
    got, out = await run_cli(*argv, "--config", str(gw.root / "gateway.yaml"))
    assert got == status
    return out


async def give_secret(gw: Harness, agent: str) -> str:
    """A fresh client secret for an agent, the way an operator would issue one."""
    return await gw.gateway.operations("test").rotate_secret(agent)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def token(gw: Harness, data: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async with gw.http() as http:
        return await http.post("/oauth/token", data=data, headers=headers)


async def client_credentials(gw: Harness, agent: str, secret: str, **extra: Any) -> dict[str, Any]:
    response = await token(gw, {"grant_type": "client_credentials", **extra}, basic(agent, secret))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def mcp_status(gw: Harness, access_token: str, path: str = "/mcp") -> httpx.Response:
    """A tools/list over plain HTTP (2025-11-25 headers), to read status codes and challenges."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "1"},
        },
    }
    async with gw.http() as http:
        return await http.post(
            path,
            json=body,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json, text/event-stream"},
        )


async def call_time(gw: Harness, access_token: str) -> Any:
    async with gw.client(access_token) as client:
        return await client.call_tool("time__get_current_time", {"timezone": "UTC"})


# ------------------------------------------------------------------ a test identity provider


@dataclass
class IdP:
    """A real JWKS endpoint on a free loopback port, with keys the test can rotate."""

    issuer: str = "https://idp.test.example/"
    audience: str = "mcp-gateway"
    port: int = 0
    keys: list[tuple[str, Any]] = field(default_factory=list)  # (kid, private key); published in order
    fetches: int = 0

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"issuer": self.issuer, "jwks_url": self.jwks_url, "audience": self.audience, **extra}

    def add_key(self, kind: str = "RS256") -> str:
        kid = f"k-{uuid.uuid4().hex[:8]}"
        key = rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
        self.keys.append((kid, key))
        return kid

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys:
            algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": published}

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str | None = None,
        header: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        kid = kid or self.keys[-1][0]
        key = dict(self.keys)[kid]
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-123",
            "iat": now,
            "exp": now + 300,
            "email": "carol@example.com",
            "email_verified": True,
            **(claims or {}),
            **overrides,
        }
        body = {k: v for k, v in body.items() if v is not None}
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(header or {})})


@contextlib.asynccontextmanager
async def identity_provider(key: str = "RS256", **settings: Any) -> AsyncIterator[IdP]:
    """A JWKS server for a test issuer; `settings` override the IdP's fields (issuer, audience)."""
    idp = IdP(port=free_port(), **settings)
    idp.add_key(key)

    async def serve_jwks(request: Request) -> JSONResponse:
        idp.fetches += 1
        return JSONResponse(idp.jwks())

    app = Starlette(routes=[Route("/jwks.json", serve_jwks)])
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", idp.port))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            yield idp
        finally:
            server.should_exit = True


def exchange_form(subject_token: str, **extra: Any) -> dict[str, Any]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": JWT_TYPE, **extra}


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}


@contextlib.asynccontextmanager
async def legacy_session(
    gw: Harness, access_token: str, path: str = "/mcp"
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A 2025-11-25 MCP session over plain HTTP; yields the client and the headers every request needs."""
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        init = await http.post(path, json=INITIALIZE, headers=headers)
        assert init.status_code == 200, init.text
        headers = {**headers, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        done = await http.post(path, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        assert done.status_code == 202, done.text
        yield http, headers


async def read_stream(response: httpx.Response, lines: list[str], first_line: anyio.Event) -> None:
    """Collect an SSE response's lines until the server ends it (cleanly or by dropping the connection)."""
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                lines.append(line)
                first_line.set()
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass


# ------------------------------------------------------------------ DPoP (RFC 9449) on the client side


class DpopKey:
    """A client's DPoP key pair: signs proofs with the public key in the header, as RFC 9449 §4.2 says."""

    def __init__(self, kind: str = "ES256") -> None:
        self.alg = kind
        self.private: Any = (
            ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else rsa.generate_private_key(65537, 2048)
        )
        algorithm = ECAlgorithm if kind == "ES256" else RSAAlgorithm
        self.jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))

    @property
    def thumbprint(self) -> str:
        members = ("crv", "kty", "x", "y") if self.jwk["kty"] == "EC" else ("e", "kty", "n")
        canonical = json.dumps({m: self.jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()

    def proof(
        self,
        method: str,
        url: str,
        access_token: str | None = None,
        *,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        body: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time())}
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            body["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        body = {k: v for k, v in {**body, **claims}.items() if v is not None}
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(body, self.private, algorithm=self.alg, headers=headers)


class DpopAuth(httpx2.Auth):
    """An httpx2 auth hook for the SDK client: `Authorization: DPoP <token>` and a fresh proof per request.

    It keeps the latest `DPoP-Nonce` the server sent and, refused with `use_dpop_nonce`, signs once more.
    """

    def __init__(self, key: DpopKey, access_token: str, nonce: str | None = None) -> None:
        self.key = key
        self.access_token = access_token
        self.nonce = nonce
        self.proofs = 0
        self.retries = 0

    def _sign(self, request: httpx2.Request) -> None:
        url = str(request.url.copy_with(query=None, fragment=None))
        request.headers["Authorization"] = f"DPoP {self.access_token}"
        request.headers["DPoP"] = self.key.proof(request.method, url, self.access_token, nonce=self.nonce)
        self.proofs += 1

    def auth_flow(self, request: httpx2.Request) -> Any:
        self._sign(request)
        response = yield request
        self.nonce = response.headers.get("dpop-nonce", self.nonce)
        if response.status_code == 401 and 'error="use_dpop_nonce"' in response.headers.get("www-authenticate", ""):
            self.retries += 1
            self._sign(request)
            response = yield request
            self.nonce = response.headers.get("dpop-nonce", self.nonce)


@contextlib.asynccontextmanager
async def dpop_client(url: str, auth: DpopAuth, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The official SDK client sending a fresh DPoP proof with every request."""
    async with mcp_http_client(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            yield client
