"""The admin HTTP API: the agents and sessions CLI verbs, behind the admin token.

Every request needs `Authorization: Bearer <admin_token>` (gateway.yaml
`admin_token`, compared in constant time); without a configured token the API
refuses everything. Each action is audited with actor "admin".

    GET  /admin/agents                        POST /admin/agents {id, owner, cost_center?, jwks?, workload?}
    GET  /admin/agents/{id}                   PUT  /admin/agents/{id}/grant {tools?, resources?, ...}
    POST /admin/agents/{id}/disable|enable|rotate
    POST /admin/agents/{id}/revoke-sessions
    GET  /admin/sessions?agent=&state=
    POST /admin/sessions/{sid}/close|revoke   POST /admin/sessions/{sid}/resume {add_calls?, add_tokens?}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config.files import LIFECYCLE_FIELDS
from gateway.errors import OperatorError, Unavailable
from gateway.http.edge import AuthFailures
from gateway.http.oauth import admin_refusal
from gateway.operations import Operations, session_json
from gateway.store.base import SessionState

if TYPE_CHECKING:
    from gateway.config.live import LiveConfig

ADMIN = "admin"
MAX_BODY = 65_536  # bytes; an admin request body is a small JSON object
_STATES = get_args(SessionState)
Handler = Callable[[Operations, Request], Awaitable[Any]]


def admin_routes(live: LiveConfig, failures: AuthFailures, operations: Callable[[str], Operations]) -> list[Route]:
    """The routes; `admin_token` is read from `live` at each request (it reloads)."""

    def route(path: str, handler: Handler, method: str, status: int = 200) -> Route:
        async def endpoint(request: Request) -> Response:
            refusal = await admin_refusal(request, live.current.admin_token, failures)
            if refusal is not None:
                return refusal
            try:
                return JSONResponse(await handler(operations(ADMIN), request), status_code=status)
            except OperatorError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except Unavailable as exc:
                return JSONResponse({"error": str(exc)}, status_code=503, headers={"retry-after": "1"})

        return Route(path, endpoint, methods=[method])

    return [
        route("/admin/agents", _list_agents, "GET"),
        route("/admin/agents", _create_agent, "POST", status=201),
        route("/admin/agents/{id}", _show_agent, "GET"),
        route("/admin/agents/{id}/grant", _grant, "PUT"),
        route("/admin/agents/{id}/disable", _disable, "POST"),
        route("/admin/agents/{id}/enable", _enable, "POST"),
        route("/admin/agents/{id}/rotate", _rotate, "POST"),
        route("/admin/agents/{id}/revoke-sessions", _revoke_agent, "POST"),
        route("/admin/sessions", _list_sessions, "GET"),
        route("/admin/sessions/{sid}/close", _close, "POST"),
        route("/admin/sessions/{sid}/revoke", _revoke, "POST"),
        route("/admin/sessions/{sid}/resume", _resume, "POST"),
    ]


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise OperatorError(f"the body is larger than {MAX_BODY} bytes", status=413)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise OperatorError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise OperatorError("the body must be a JSON object")
    return body


async def _list_agents(ops: Operations, request: Request) -> Any:
    return {"agents": await ops.list_agents()}


async def _create_agent(ops: Operations, request: Request) -> Any:
    body = await _body(request)
    lifecycle = {name: body.pop(name) for name in LIFECYCLE_FIELDS if name in body}
    unknown = set(body) - {"id", "owner", "cost_center", "jwks", "workload"}
    if unknown:
        raise OperatorError(f"unknown field(s): {', '.join(sorted(unknown))}")
    secret = await ops.create_agent(
        body.get("id", ""),
        body.get("owner", ""),
        body.get("cost_center"),
        body.get("jwks"),
        body.get("workload"),
        lifecycle,
    )
    return {"id": body["id"], "client_secret": secret} if secret else {"id": body["id"]}


async def _show_agent(ops: Operations, request: Request) -> Any:
    return await ops.show_agent(request.path_params["id"])


async def _grant(ops: Operations, request: Request) -> Any:
    grant = await ops.set_grant(request.path_params["id"], await _body(request))
    return {"id": request.path_params["id"], "grant": grant.model_dump(mode="json")}


async def _disable(ops: Operations, request: Request) -> Any:
    return {"disabled": request.path_params["id"], "revoked": await ops.disable_agent(request.path_params["id"])}


async def _enable(ops: Operations, request: Request) -> Any:
    await ops.enable_agent(request.path_params["id"])
    return {"enabled": request.path_params["id"]}


async def _rotate(ops: Operations, request: Request) -> Any:
    return {"id": request.path_params["id"], "client_secret": await ops.rotate_secret(request.path_params["id"])}


async def _revoke_agent(ops: Operations, request: Request) -> Any:
    return {"revoked": await ops.revoke_agent_sessions(request.path_params["id"])}


async def _list_sessions(ops: Operations, request: Request) -> Any:
    state = request.query_params.get("state")
    if state is not None and state not in _STATES:
        raise OperatorError(f"state must be one of {', '.join(_STATES)}")
    sessions = await ops.list_sessions(request.query_params.get("agent"), state)  # type: ignore[arg-type]
    return {"sessions": [session_json(s) for s in sessions]}


async def _close(ops: Operations, request: Request) -> Any:
    await ops.end_session(request.path_params["sid"], "closed")
    return {"closed": request.path_params["sid"]}


async def _revoke(ops: Operations, request: Request) -> Any:
    await ops.end_session(request.path_params["sid"], "revoked")
    return {"revoked": request.path_params["sid"]}


async def _resume(ops: Operations, request: Request) -> Any:
    body = await _body(request)
    session = await ops.resume_session(request.path_params["sid"], body.get("add_calls", 0), body.get("add_tokens", 0))
    return {"resumed": session.sid, "calls_limit": session.calls_limit, "tokens_limit": session.tokens_limit}
