"""What every console route shares: templates, and the guards around pages (GET) and actions (POST).

A page needs a signed-in operator (else a redirect to the sign-in page; 401
for an event stream). An action also needs this gateway's own origin and the
session's CSRF token (else 403), and a small form body (else 413). Both
refuse a Host the gateway does not serve (421), as the edge does for MCP.
An operator error becomes an error page with its status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from gateway.console.auth import ConsoleAuth, Operator, csrf_matches
from gateway.errors import GatewayError, OperatorError, Unavailable
from gateway.operations import Operations

if TYPE_CHECKING:
    from jinja2 import Environment

    from gateway.console.deps import ConsoleDeps

MAX_FORM = 16_384  # bytes: a console form is a few short fields
NOTICES = {  # what an action's redirect may say; the subject is shown escaped
    "closed": "Closed session",
    "revoked": "Revoked session",
    "resumed": "Resumed session",
    "agent-revoked": "Revoked every live session of agent",
    "enabled": "Enabled agent",
    "disabled": "Disabled agent (live sessions revoked):",
    "pinned": "Pinned",
    "verified": "Verified the chain",
}

Page = Callable[[Request, Operator], Awaitable[Response]]
Action = Callable[[Request, Operator, FormData], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def base(request: Request) -> str:
    """Where the console is mounted (its links and redirects are built from it)."""
    return str(request.scope.get("root_path", ""))


def templates() -> Environment:
    """The console's templates, every value autoescaped. Jinja2 is imported here, at the first page: most
    gateways never serve one, and its import is 1 MB of every gateway's RSS (benchmarks/rss.py)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("gateway.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters.update(iso=iso, age=age)
    return env


class Web:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        self.auth = ConsoleAuth(deps)

    @cached_property
    def env(self) -> Environment:
        return templates()

    def ops(self, operator: Operator) -> Operations:
        """The CLI's operations, audited with this operator as the actor (console:<who>)."""
        return self.deps.operations(operator.actor)

    def render(self, request: Request, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(base=base(request), request=request, **context)

    def html(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.render(request, template, **context), status_code=status)

    def redirect(self, request: Request, to: str) -> RedirectResponse:
        return RedirectResponse(f"{base(request)}/{to}", status_code=303)

    def done(self, request: Request, page: str, notice: str, subject: str = "") -> Response:
        return self.redirect(request, f"{page}?{urlencode({'notice': notice, 'subject': subject})}")

    def notice(self, request: Request) -> tuple[str, str] | None:
        notice = NOTICES.get(request.query_params.get("notice", ""))
        return (notice, request.query_params.get("subject", "")) if notice else None

    def host_refusal(self, request: Request) -> Response | None:
        if request.headers.get("host") in self.deps.hosts:
            return None
        return PlainTextResponse(
            "misdirected: this Host is not one the gateway serves (allowed_hosts)", status_code=421
        )

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is not None:
            return origin in self.deps.origins
        return request.headers.get("sec-fetch-site", "same-origin") == "same-origin"

    async def form(self, request: Request) -> FormData | None:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_FORM:
            return None
        return await request.form(max_files=0, max_fields=32)

    def error(self, request: Request, operator: Operator | None, message: str, status: int) -> HTMLResponse:
        return self.html(request, "error.html", status, operator=operator, message=message, page="")

    async def _guarded(self, request: Request, operator: Operator, call: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await call()
        except OperatorError as exc:
            return self.error(request, operator, str(exc), exc.status)
        except Unavailable as exc:
            return self.error(request, operator, str(exc), 503)
        except GatewayError as exc:  # a manifest that cannot be read or rewritten
            return self.error(request, operator, str(exc), 409)

    def page(self, page: Page) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if (refusal := self.host_refusal(request)) is not None:
                return refusal
            operator = self.auth.signed_in(request)
            if operator is None:
                if request.headers.get("accept", "").startswith("text/event-stream"):
                    return PlainTextResponse("sign in first", status_code=401)
                return self.redirect(request, "login")
            return await self._guarded(request, operator, lambda: page(request, operator))

        return endpoint

    def action(self, action: Action) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if (refusal := self.host_refusal(request)) is not None:
                return refusal
            operator = self.auth.signed_in(request)
            if operator is None:
                return PlainTextResponse("sign in first", status_code=401)
            if not self.same_origin(request):
                return PlainTextResponse(
                    "refused: this request did not come from the console's own origin", status_code=403
                )
            form = await self.form(request)
            if form is None:
                return PlainTextResponse(f"refused: a console form is at most {MAX_FORM} bytes", status_code=413)
            if not csrf_matches(operator, form.get("csrf")):
                return PlainTextResponse("refused: missing or wrong CSRF token; reload the page", status_code=403)
            return await self._guarded(request, operator, lambda: action(request, operator, form))

        return endpoint
