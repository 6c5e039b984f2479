"""Real parts for the sign-in tests: the local OIDC provider (examples/quickstart/idp.mjs, npm oidc-provider),
an HTTPS server for Client ID Metadata Documents, Chromium driven by Playwright, and a gateway with login on."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.harness import Harness, free_port, running_gateway, time_manifest
from tests.support.processes import serving

ROOT = Path(__file__).resolve().parents[2]
IDP_SCRIPT = ROOT / "examples" / "quickstart" / "idp.mjs"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
IDP_SECRET = "test-idp-client-secret"
STARTUP = 30.0


@contextlib.asynccontextmanager
async def identity_provider(redirect_uri: str) -> AsyncIterator[str]:
    """The real OIDC provider on a free loopback port; yields its issuer."""
    node = shutil.which("node")
    assert node, "node is needed for the OIDC provider (npm ci installs oidc-provider)"
    port = free_port()
    env = {
        **os.environ,
        "IDP_PORT": str(port),
        "IDP_REDIRECT_URI": redirect_uri,
        "IDP_CLIENT_SECRET": IDP_SECRET,
        "IDP_PASSWORD": PASSWORD,
    }
    async with serving([node, str(IDP_SCRIPT)], b"ready", env=env, stream="stdout", cwd=ROOT, timeout=STARTUP):
        yield f"http://127.0.0.1:{port}"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cimd-cert.pem", directory / "cimd-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Documents:
    """The metadata documents the HTTPS server serves, by path; special paths misbehave on purpose."""

    base: str = ""
    documents: dict[str, Any] = field(default_factory=dict)
    never: anyio.Event = field(default_factory=anyio.Event)  # the slow document waits on it

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def add(self, path: str, redirect_uris: list[str], *, name: str = "Test IDE", **extra: Any) -> str:
        url = self.url(path)
        self.documents[path] = {
            "client_id": url,
            "client_name": name,
            "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            **extra,
        }
        return url


def _documents_app(docs: Documents) -> Starlette:
    async def serve(request: Request) -> Response:
        path = request.url.path
        if path == "/slow.json":
            await docs.never.wait()
        if path == "/big.json":
            return JSONResponse(
                {"client_id": docs.url(path), "redirect_uris": ["https://x.example/cb"], "pad": "x" * 10_000}
            )
        if path == "/redirect.json":
            return RedirectResponse(docs.url("/client.json"), status_code=302)
        if path not in docs.documents:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(docs.documents[path], headers={"cache-control": "max-age=0, no-store"})

    return Starlette(routes=[Route("/{path:path}", serve)])


@contextlib.asynccontextmanager
async def metadata_server(directory: Path) -> AsyncIterator[tuple[Documents, Path]]:
    """An HTTPS server on loopback for metadata documents; yields them and the CA file that trusts it."""
    cert, key = self_signed(directory)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    docs = Documents(base=f"https://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(
        uvicorn.Config(
            _documents_app(docs),
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield docs, cert
        finally:
            docs.never.set()
            server.should_exit = True


GRANT = {"tools": ["time.*"], "budget": {"session_ttl": "8h", "idle_timeout": "1h"}}


def login_config(issuer: str, docs_base: str, ca_file: Path, **login: Any) -> dict[str, Any]:
    return {
        "login": {"identity_provider": issuer, "consent": "once", **login},
        "identity_providers": [
            {
                "issuer": issuer,
                "jwks_url": f"{issuer}/jwks",
                "audience": "mcp-gateway",
                "algorithms": ["RS256"],
                "oidc": {"client_id": "mcp-gateway", "client_secret": IDP_SECRET},
            }
        ],
        "clients": {
            "metadata_documents": [f"{docs_base}/*"],
            "dynamic_registration": True,
            "fetch": {"ca_file": str(ca_file), "timeout": "2s", "max_bytes": 5120},
        },
    }


class Callbacks:
    """The client's own loopback redirect listener, as an IDE runs one: records each URL it is sent to."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.arrived = anyio.Event()
        self.port = 0

    async def _land(self, request: Request) -> Response:
        if request.url.path != "/callback":  # the browser also asks for /favicon.ico
            return Response(status_code=404)
        self.urls.append(str(request.url))
        self.arrived.set()
        return Response("signed in; you can close this window", media_type="text/plain")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._land)])

    async def next(self, seen: int) -> str:
        """The first URL after the `seen` already recorded."""
        while len(self.urls) <= seen:
            self.arrived = anyio.Event()
            await self.arrived.wait()
        return self.urls[seen]


@contextlib.asynccontextmanager
async def callback_server() -> AsyncIterator[Callbacks]:
    callbacks = Callbacks()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    callbacks.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(callbacks.app(), log_config=None, access_log=False, lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield callbacks
        finally:
            server.should_exit = True


@dataclass
class SignIn:
    gw: Harness
    issuer: str
    docs: Documents
    callbacks: Callbacks

    @property
    def callback_port(self) -> int:
        return self.callbacks.port

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.callback_port}/callback"


@contextlib.asynccontextmanager
async def sign_in_world(
    tmp_path: Path, *, users: list[str] | None = None, templates: dict[str, Any] | None = None, **login: Any
) -> AsyncIterator[SignIn]:
    """The IdP, the metadata server and a gateway whose login uses them (and an `ide` template for them)."""
    port = free_port()
    async with (
        identity_provider(f"http://127.0.0.1:{port}/oauth/callback") as issuer,
        metadata_server(tmp_path) as (docs, ca),
        callback_server() as callbacks,
    ):
        interactive = templates or {
            "ide": {"clients": [f"{docs.base}/*", "dcr-*"], "users": users or ["*@example.com"], "grant": GRANT}
        }
        async with running_gateway(
            tmp_path / "gw",
            manifests=[time_manifest()],
            port=port,
            extra=login_config(issuer, docs.base, ca, **login),
            interactive=interactive,
        ) as gw:
            yield SignIn(gw, issuer, docs, callbacks)


# ------------------------------------------------------------ the browser


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium (Debian's) under Playwright; yields a fresh browser context per use."""
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "Chromium is needed: apt-get install -y chromium"
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Landing:
    url: str

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}


async def authorize_in_browser(
    chromium: Any,
    url: str,
    callbacks: Callbacks | str,
    *,
    email: str = "alice@example.com",
    password: str = PASSWORD,
    decision: str | None = "approve",
    context: Any = None,
    page_error: bool = False,
) -> Landing:
    """Open the authorization URL, sign in at the IdP, answer the consent page (`decision` None: it is remembered);
    the URL the client's redirect listener got. With `page_error`, the text of the error page the browser
    stops at instead.
    """
    own = context is None
    context = context or await chromium.new_context()
    seen = len(callbacks.urls) if isinstance(callbacks, Callbacks) else 0
    page = await context.new_page()
    try:
        with anyio.fail_after(30):
            await page.goto(url)
            if await page.locator("#email").count():
                await page.fill("#email", email)
                await page.fill("#password", password)
                await page.click("#submit")
            if page_error:
                await page.locator("#error").wait_for()
                return Landing(await page.locator("#error").inner_text())
            if decision is not None:
                await page.locator(f"#{decision}").click()
            if isinstance(callbacks, Callbacks):
                landing = await callbacks.next(seen)
            else:  # another program's redirect listener: the browser's URL tells where it landed
                await page.wait_for_url(f"{callbacks}**")
                landing = page.url
        return Landing(landing)
    except TimeoutError:
        text = await page.locator("body").inner_text() if not page.is_closed() else ""
        raise AssertionError(f"the browser stopped at {page.url}: {text[:500]}") from None
    finally:
        # Pages close with their context: closing one right after its navigation can stall in Chromium.
        if own:
            await context.close()
