"""The Sessions page: the live list with its filters, its server-sent updates, and close / revoke / resume."""

from __future__ import annotations

from typing import Any, get_args

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console import live
from gateway.console.auth import Operator
from gateway.console.web import Web
from gateway.errors import OperatorError
from gateway.store.base import SessionRecord, SessionState

STATES = get_args(SessionState)
LIVE = ("active", "suspended")  # the default filter, "live"


def _filter(request: Request) -> tuple[str | None, str, str | None]:
    agent = request.query_params.get("agent") or None
    state = request.query_params.get("state") or "live"
    if state not in (*STATES, "live", "all"):
        raise OperatorError(f"state must be one of live, all, {', '.join(STATES)}")
    return agent, state, request.query_params.get("human") or None


def _count(value: Any) -> int:
    text = str(value or "0").strip() or "0"
    if not text.isdigit() or len(text) > 12:
        raise OperatorError("add-calls and add-tokens must be whole numbers, not negative")
    return int(text)


def routes(web: Web) -> list[Route]:
    async def matching(operator: Operator, agent: str | None, state: str, human: str | None) -> list[SessionRecord]:
        wanted: Any = state if state in STATES else None
        found = await web.ops(operator).list_sessions(agent, wanted)
        if state == "live":
            found = [s for s in found if s.state in LIVE]
        if human is not None:
            found = [s for s in found if s.on_behalf_of == human]
        return sorted(found, key=lambda s: -s.created_at)

    def rows(request: Request, operator: Operator, sessions: list[SessionRecord]) -> str:
        return web.render(request, "_session_rows.html", operator=operator, sessions=sessions, now=web.deps.clock())

    async def page(request: Request, operator: Operator) -> Response:
        agent, state, human = _filter(request)
        found = await matching(operator, agent, state, human)
        agents = sorted(a["id"] for a in await web.ops(operator).list_agents())
        return web.html(
            request,
            "sessions.html",
            operator=operator,
            page="sessions",
            agents=agents,
            agent=agent,
            state=state,
            human=human,
            states=("live", "all", *STATES),
            rows=Markup(rows(request, operator, found)),  # escaped by its own (autoescaped) template
            notice=web.notice(request),
            live_query=request.url.query,
        )

    async def updates(request: Request, operator: Operator) -> Response:
        agent, state, human = _filter(request)

        async def render() -> str:
            current = web.auth.signed_in(request)  # every tick: the stream ends with the sign-in
            if current is None:
                raise live.SignedOut
            return rows(request, current, await matching(current, agent, state, human))

        return live.rows_stream(web.deps, render)

    async def act(request: Request, operator: Operator, form: FormData) -> Response:
        sid, verb = request.path_params["sid"], request.path_params["verb"]
        ops = web.ops(operator)
        if verb in ("close", "revoke"):
            await ops.end_session(sid, "closed" if verb == "close" else "revoked")
            return web.done(request, "sessions", "closed" if verb == "close" else "revoked", sid)
        if verb == "resume":
            await ops.resume_session(sid, _count(form.get("add_calls")), _count(form.get("add_tokens")))
            return web.done(request, "sessions", "resumed", sid)
        raise OperatorError(f"unknown session action {verb!r}", status=404)

    return [
        Route("/sessions", web.page(page)),
        Route("/sessions/live", web.page(updates)),
        Route("/sessions/{sid}/{verb:str}", web.action(act), methods=["POST"]),
    ]
