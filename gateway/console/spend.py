"""The Spend page: the report's totals, charts and evidence over a window, and its downloads.

The numbers are `mcp-gateway report`'s (gateway/report/chargeback.py over the same audit
files); a download is exactly what `report --format csv|json|html|focus` writes
for the same window.
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.files import audit_files
from gateway.config.durations import parse_moment
from gateway.console.auth import Operator
from gateway.console.web import Web
from gateway.errors import OperatorError
from gateway.report.chargeback import FORMATS, build, read_records, render, tokens
from gateway.report.focus import render_focus
from gateway.report.html import bars, spend_chart

WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}
GROUPS = ("agent", "owner", "task", "tool")
TOP = 12  # bars per chart
MEDIA = {"csv": "text/csv", "json": "application/json", "html": "text/html", "focus": "text/csv"}


def window(request: Request, now: float) -> tuple[str, float | None, float | None]:
    """(name, since, until): a named window back from now, or the `since`/`until` typed (ISO time or 7d).

    Raises:
        OperatorError: an unreadable moment, since not before until, an unknown window.
    """
    since_text, until_text = request.query_params.get("since"), request.query_params.get("until")
    if since_text or until_text:
        try:
            since = parse_moment(since_text, now) if since_text else None
            until = parse_moment(until_text, now) if until_text else None
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        if since is not None and until is not None and since >= until:
            raise OperatorError("since must be before until")
        return "custom", since, until
    name = request.query_params.get("window") or "24h"
    if name not in WINDOWS:
        raise OperatorError(f"window must be one of {', '.join(WINDOWS)}")
    span = WINDOWS[name]
    return name, (now - span if span is not None else None), None


def routes(web: Web) -> list[Route]:
    async def records() -> list[dict[str, Any]]:
        """What `mcp-gateway report` reads by default: the stream, its rotated files and the operator chain."""
        found, _ = await anyio.to_thread.run_sync(read_records, audit_files(web.deps.config.audit.path))
        return found

    async def page(request: Request, operator: Operator) -> Response:
        name, since, until = window(request, web.deps.clock())
        stream = await records()
        reports = {by: build(stream, by, since, until).as_json() for by in GROUPS}
        charts = {
            by: {  # bars() escapes every label (agent-chosen task names included)
                "tokens": Markup(bars([(r[by], int(tokens(r))) for r in reports[by]["rows"][:TOP]], "#2563eb")),
                "cost": Markup(bars([(r[by], round(r["cost_usd"], 4)) for r in reports[by]["rows"][:TOP]], "#16a34a")),
            }
            for by in GROUPS
        }
        data = reports["agent"]
        return web.html(
            request,
            "spend.html",
            operator=operator,
            page="spend",
            window=name,
            windows=(*WINDOWS, *(["custom"] if name == "custom" else [])),
            data=data,
            charts=charts,
            groups=GROUPS,
            over_time=Markup(spend_chart(data["charts"]["spend_by_agent"])),
            query={k: v for k, v in request.query_params.items() if k in ("since", "until", "window")},
            since=request.query_params.get("since", ""),
            until=request.query_params.get("until", ""),
            formats=(*FORMATS[1:], "focus"),
        )

    async def export(request: Request, operator: Operator) -> Response:
        _, since, until = window(request, web.deps.clock())
        fmt, by = request.query_params.get("format", "json"), request.query_params.get("by", "agent")
        if fmt not in MEDIA:
            raise OperatorError(f"format must be one of {', '.join(MEDIA)}")
        stream = await records()
        try:
            text = (
                render_focus(stream, since, until, web.deps.config.public_url)
                if fmt == "focus"
                else render(build(stream, by, since, until), fmt)
            )
        except ValueError as exc:  # --by outside GROUPS
            raise OperatorError(str(exc)) from None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"mcp-gateway-report-{by if fmt != 'focus' else 'focus'}-{stamp}.{'csv' if fmt == 'focus' else fmt}"
        return Response(
            text,
            media_type=f"{MEDIA[fmt]}; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    return [Route("/spend", web.page(page)), Route("/spend/export", web.page(export))]
