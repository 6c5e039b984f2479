"""Operators signing in through the company's identity provider (`login:`), for the emails in `operators:`.

    GET /console/login/idp    -> 303 to the provider (code + PKCE + nonce), the sign-in bound to this browser
    GET /console/callback     <- the provider's answer: ID token verified, the email must be in `operators:`

The sign-in in progress is a sealed, HttpOnly, SameSite=Lax cookie scoped to /console (the
provider's redirect back is a cross-site navigation, which a Strict cookie would not survive); its
`state` is compared in constant time. The relying party is the sign-in's own (gateway/login/rp.py),
with /console/callback as its redirect URI, which the provider must list for the gateway's client.
A verified operator gets the console session `ConsoleAuth.start_session` makes, as the admin token
does. The answer is a page that moves on to /console itself: the session cookie is SameSite=Strict,
and a browser does not send it on the redirect chain a cross-site navigation started.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.audit.events import Event
from gateway.console.auth import is_operator
from gateway.console.web import Web, base
from gateway.errors import Unavailable
from gateway.identity.idp import IdentityProviders
from gateway.identity.sealing import InvalidEnvelope, Sealer
from gateway.login.rp import LoginFailed, RelyingParty

log = logging.getLogger("gateway.console")

COOKIE = "mcp_console_idp"
PENDING_TTL = 600.0  # seconds a sign-in at the provider may take


def routes(web: Web, idps: IdentityProviders, closers: list[Callable[[], Awaitable[None]]]) -> list[Route]:
    deps, auth = web.deps, web.auth
    provider = deps.config.login_provider
    if provider is None or not deps.config.operators:
        return []
    rp = RelyingParty(provider, idps, f"{deps.config.public_url}/console/callback", deps.clock)
    closers.append(rp.close)
    sealer = Sealer(deps.console_key)
    secure = deps.config.public_url.startswith("https://")

    def refused(request: Request, message: str, status: int) -> Response:
        response = web.html(
            request,
            "login.html",
            status,
            operator=None,
            page="login",
            refused=message,
            token_configured=deps.config.admin_token is not None,
            idp=provider.issuer,
        )
        response.delete_cookie(COOKIE, path="/console", secure=secure, httponly=True, samesite="lax")
        return response

    async def start(request: Request) -> Response:
        if (refusal := web.host_refusal(request)) is not None:
            return refusal
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # RFC 7636: 43 to 128 characters
        try:
            url = await rp.authorization_url(state=state, nonce=nonce, verifier=verifier)
        except Unavailable as exc:
            return refused(request, f"The identity provider cannot be reached now ({exc}); try again.", 503)
        response = RedirectResponse(url, status_code=303)
        pending = {"kind": "console-idp", "state": state, "nonce": nonce, "verifier": verifier}
        response.set_cookie(
            COOKIE,
            sealer.seal(pending, deps.clock() + PENDING_TTL),
            max_age=int(PENDING_TTL),
            path="/console",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(request: Request) -> Response:
        if (refusal := web.host_refusal(request)) is not None:
            return refusal
        remote = request.client.host if request.client else "unknown"
        try:
            pending = sealer.open(request.cookies.get(COOKIE, ""), deps.clock())
        except InvalidEnvelope:
            pending = {}
        state, code = request.query_params.get("state", ""), request.query_params.get("code", "")
        if pending.get("kind") != "console-idp" or not hmac.compare_digest(str(pending.get("state", "")), state):
            await web.deps.failures.failed(remote, "console sign-in: state does not match this browser's sign-in")
            return refused(request, "That sign-in did not start in this browser, or took too long; start again.", 400)
        if not code:
            return refused(request, "The identity provider did not sign you in.", 401)
        try:
            human = await rp.redeem(code, verifier=str(pending["verifier"]), nonce=str(pending["nonce"]))
        except LoginFailed as exc:
            log.warning("console sign-in refused: %s", exc.reason)
            await web.deps.failures.failed(remote, f"console sign-in: {exc.reason}")
            return refused(request, "The identity provider's answer did not verify.", 401)
        except Unavailable as exc:
            return refused(request, f"The identity provider cannot be reached now ({exc}); try again.", 503)
        if human.email is None or not is_operator(deps.config.operators, human.email):
            await web.deps.failures.failed(remote, "console sign-in: not an operator")
            return refused(request, f"{human.email or 'That account'} is not an operator of this gateway.", 403)
        target = f"{base(request)}/sessions"
        response = HTMLResponse(
            f'<!doctype html><meta http-equiv="refresh" content="0;url={escape(target)}">'
            f'<title>Signed in</title><p>Signed in. <a href="{escape(target)}">Continue to the console</a>.</p>'
        )
        response.delete_cookie(COOKIE, path="/console", secure=secure, httponly=True, samesite="lax")
        operator = auth.start_session(response, human.email, "idp")
        await deps.audit.emit(
            Event.CONSOLE_SIGNED_IN,
            durable=True,
            actor=operator.actor,
            via="idp",
            on_behalf_of=human.email,
            remote_addr=remote,
        )
        return response

    return [
        Route("/login/idp", start, methods=["GET"]),
        Route("/callback", callback, methods=["GET"]),
    ]
