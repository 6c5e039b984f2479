"""The Agents page: every agent with its owner, kind, credential and lifecycle; enable / disable / rotate."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import yaml
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.auth import Operator
from gateway.console.web import Web
from gateway.errors import OperatorError


def routes(web: Web) -> list[Route]:
    async def rows(operator: Operator) -> list[dict[str, Any]]:
        ops = web.ops(operator)
        found = []
        for listed in await ops.list_agents():
            shown = await ops.show_agent(listed["id"])
            lifecycle = shown.get("lifecycle") or {}
            set_at = lifecycle.get("credential_set_at")
            found.append(
                {
                    **listed,
                    **shown,
                    "lifecycle": lifecycle,
                    "credential_age": web.deps.clock() - datetime.fromisoformat(set_at).timestamp() if set_at else None,
                    "kind": "interactive" if ":" in listed["id"] else shown["source"],
                    "grant_yaml": yaml.safe_dump(shown["grant"], sort_keys=True, default_flow_style=False),
                }
            )
        return sorted(found, key=lambda r: r["id"])

    async def page(request: Request, operator: Operator, secret: tuple[str, str] | None = None) -> Response:
        return web.html(
            request,
            "agents.html",
            operator=operator,
            page="agents",
            agents=await rows(operator),
            notice=web.notice(request),
            secret=secret,
        )

    async def act(request: Request, operator: Operator, form: FormData) -> Response:
        agent, verb = request.path_params["id"], request.path_params["verb"]
        ops = web.ops(operator)
        if verb == "enable":
            await ops.enable_agent(agent)
            return web.done(request, "agents", "enabled", agent)
        if verb == "disable":
            revoked = await ops.disable_agent(agent)
            return web.done(request, "agents", "disabled", f"{agent} ({len(revoked)})")
        if verb == "rotate":  # the new secret is shown once, in this answer only (never stored, never redirected)
            return await page(request, operator, secret=(agent, await ops.rotate_secret(agent)))
        if verb == "revoke-sessions":
            await ops.revoke_agent_sessions(agent)
            return web.done(request, "sessions", "agent-revoked", agent)
        raise OperatorError(f"unknown agent action {verb!r}", status=404)

    return [
        Route("/agents", web.page(page)),
        Route("/agents/{id}/{verb:str}", web.action(act), methods=["POST"]),
    ]
