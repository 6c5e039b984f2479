"""The operator console: `/console`, server-rendered pages over the same operations as the CLI and admin API.

Every page needs a signed-in operator (gateway/console/auth.py); every change is
a POST with the session's CSRF token from this gateway's own origin, and goes
through the code the CLI uses (gateway/operations.py, gateway/pins/pinning.py),
audited with actor `console:<who>`. Responses carry a strict
Content-Security-Policy (scripts and styles from /console/static only),
`X-Frame-Options: DENY` and `Cache-Control: no-store`; templates escape every
value (Jinja2 autoescape), and live updates (server-sent events) insert
agent-controlled text only as text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from gateway.console import agents, audit, idp, sessions, signin, spend, tools
from gateway.console.headers import SecurityHeaders
from gateway.console.web import Web

if TYPE_CHECKING:
    from gateway.console.deps import ConsoleDeps
    from gateway.identity.idp import IdentityProviders

PATH = "/console"


def console_routes(deps: ConsoleDeps, idps: IdentityProviders) -> tuple[Mount, Callable[[], Awaitable[None]]]:
    """The console's routes, and what to await at shutdown (the identity provider client, if any)."""
    web = Web(deps)
    closers: list[Callable[[], Awaitable[None]]] = []
    routes = [route for page in (signin, sessions, agents, spend, audit, tools) for route in page.routes(web)]
    routes += idp.routes(web, idps, closers)
    routes.append(Mount("/static", StaticFiles(packages=[("gateway.console", "static")])))

    async def close() -> None:
        for closer in closers:
            await closer()

    return Mount(PATH, routes=routes, middleware=[Middleware(SecurityHeaders)]), close


__all__ = ["PATH", "console_routes"]
