"""The Tools page: each server's catalog with pin status, and Approve for a quarantined (or unpinned) tool.

Approve writes the pin through gateway/pins/pinning.py, the code `manifests pin
SERVER --tool NAME` runs, from the definition the gateway serves now, and only
if that is still the definition the operator reviewed (its pin is in the form).
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.auth import Operator
from gateway.console.catalog import servers
from gateway.console.web import Web
from gateway.errors import OperatorError
from gateway.pins import pinning
from gateway.upstream.manifests import read_manifest


def routes(web: Web) -> list[Route]:
    deps = web.deps

    async def page(request: Request, operator: Operator) -> Response:
        return web.html(
            request,
            "tools.html",
            operator=operator,
            page="tools",
            servers=servers(deps),
            notice=web.notice(request),
            require_pins=deps.config.require_pins,
        )

    async def approve(request: Request, operator: Operator, form: FormData) -> Response:
        server, tool, reviewed = request.path_params["server"], form.get("tool"), form.get("pin")
        upstream = deps.upstreams.get(server)
        if upstream is None or upstream.spec.source is None:
            raise OperatorError(f"no server {server!r} with a manifest file", status=404)
        if not isinstance(tool, str) or not isinstance(reviewed, str):
            raise OperatorError("the form names no tool and pin")
        path = upstream.spec.source
        current = dict(read_manifest(path).pins)  # the file's pins now, as `manifests pin` reads them
        change = pinning.plan(path, server, upstream.spec.owner, current, upstream.catalog.tools, tool)
        entry = next((e for e in change.entries if e.tool == tool), None)
        if entry is None:
            raise OperatorError(f"{server}.{tool} is pinned already", status=409)
        if entry.new_pin != reviewed:
            raise OperatorError(
                f"{server}.{tool} changed again since you reviewed it; review the new definition", status=409
            )
        await pinning.write(change, deps.audit, operator.actor)
        await upstream.requarantine()  # at once, not at the next look at the manifest files
        return web.done(request, "tools", "pinned", f"{server}.{tool}")

    return [
        Route("/tools", web.page(page)),
        Route("/tools/{server}/approve", web.action(approve), methods=["POST"]),
    ]
