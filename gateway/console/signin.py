"""Signing in with the admin token, and signing out."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.audit.events import Event
from gateway.console.auth import ADMIN, Operator
from gateway.console.web import Web


def routes(web: Web) -> list[Route]:
    deps, auth = web.deps, web.auth
    provider = deps.config.login_provider
    idp_issuer = provider.issuer if provider is not None and deps.config.operators else None  # see console/idp.py

    def form_page(request: Request, status: int = 200, refused: str | None = None) -> Response:
        return web.html(
            request,
            "login.html",
            status,
            operator=None,
            page="login",
            refused=refused,
            token_configured=deps.config.admin_token is not None,
            idp=idp_issuer,
        )

    async def login_form(request: Request) -> Response:
        if (refusal := web.host_refusal(request)) is not None:
            return refusal
        if auth.signed_in(request) is not None:
            return web.redirect(request, "sessions")
        return form_page(request)

    async def login(request: Request) -> Response:
        if (refusal := web.host_refusal(request)) is not None:
            return refusal
        if request.headers.get("origin") not in web.deps.origins:  # login CSRF: only our own form signs in
            return PlainTextResponse("refused: sign in from the console's own page", status_code=403)
        form = await web.form(request)
        token = form.get("token") if form is not None else None
        remote = request.client.host if request.client else "unknown"
        if not isinstance(token, str) or not auth.admin_token_matches(token):
            await web.deps.failures.failed(remote, "console sign-in: admin token missing or wrong")  # aggregated
            return form_page(request, 401, "That is not the admin token.")
        response = web.redirect(request, "sessions")
        operator = auth.start_session(response, ADMIN, "admin_token")
        await deps.audit.emit(
            Event.CONSOLE_SIGNED_IN, durable=True, actor=operator.actor, via="admin_token", remote_addr=remote
        )
        return response

    async def logout(request: Request, operator: Operator, form: FormData) -> Response:
        response = web.redirect(request, "login")
        auth.end_session(response, operator)
        await deps.audit.emit(Event.CONSOLE_SIGNED_OUT, durable=True, actor=operator.actor)
        return response

    async def home(request: Request, operator: Operator) -> Response:
        return web.redirect(request, "sessions")

    return [
        Route("/", web.page(home)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", web.action(logout), methods=["POST"]),
    ]
