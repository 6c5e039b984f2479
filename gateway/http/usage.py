"""POST /v1/usage: an agent runtime reports the model usage of its session.

The edge authenticates it exactly like the MCP endpoints (the session token,
401 with WWW-Authenticate otherwise). A report is recorded as `model.usage`
and counted against the session's and the agent's token budgets, so model
calls and tool calls join on one session id. Without `cost_usd`, the cost is
computed from `prices` in gateway.yaml when the model is listed there.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from gateway.audit.events import Event
from gateway.config.files import Price
from gateway.errors import Unavailable
from gateway.http.edge import send_json
from gateway.identity.principal import PRINCIPAL, Principal

if TYPE_CHECKING:
    from gateway.audit import Audit
    from gateway.config.live import LiveConfig
    from gateway.spend.budgets import Budgets

PATH = "/v1/usage"
MAX_BODY = 16_384
MAX_TOKENS = 1_000_000_000  # per report: larger is a bug in the reporter, not usage
MAX_COST_USD = 1_000_000.0  # per report: keeps every total finite (1.7e308 twice is inf, and inf is not JSON)


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(ge=0, le=MAX_TOKENS)
    cost_usd: float | None = Field(None, ge=0, le=MAX_COST_USD)


def cost_of(report: UsageReport, prices: dict[str, Price]) -> tuple[float | None, str]:
    """(cost in USD, where it came from: reported | priced | unpriced)."""
    if report.cost_usd is not None:
        return report.cost_usd, "reported"
    price = prices.get(report.model)
    if price is None:
        return None, "unpriced"
    cost = (report.input_tokens * price.input_per_mtok + report.output_tokens * price.output_per_mtok) / 1e6
    return round(cost, 9), "priced"


class UsageEndpoint:
    """The ASGI app the edge runs for /v1/usage once the request is authenticated."""

    def __init__(self, live: LiveConfig, audit: Audit, budgets: Budgets) -> None:
        self.live = live  # `prices` reloads
        self.audit = audit
        self.budgets = budgets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, _error("method_not_allowed", "use POST"), {"allow": "POST"})
            return
        principal = scope[PRINCIPAL]
        body = await _body(receive)
        if body is None:
            await send_json(send, 413, _error("invalid_request", f"the body is larger than {MAX_BODY} bytes"))
            return
        try:
            report = parse(body)
        except ValueError as exc:
            await send_json(send, 400, _error("invalid_request", str(exc)))
            return
        try:
            await send_json(send, 200, await self.record(principal, report))
        except Unavailable as exc:
            await send_json(
                send, 503, _error("temporarily_unavailable", f"{exc}; nothing was recorded"), {"retry-after": "1"}
            )

    async def record(self, principal: Principal, report: UsageReport) -> dict[str, Any]:
        """Write `model.usage` (durably), then count its tokens against the budgets.

        Once recorded, the tokens are counted even if the store is away (they wait and land later).

        Raises:
            AuditUnavailable: it cannot be recorded (nothing is counted).
        """
        cost, source = cost_of(report, self.live.current.prices)
        tokens = report.input_tokens + report.output_tokens
        call_id = secrets.token_hex(8)  # the settlement's key: counted once however often it is retried
        await self.audit.emit(
            Event.MODEL_USAGE,
            durable=True,
            **principal.audit_fields(),
            model=report.model,
            call_id=call_id,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
            cost_usd=cost,
            cost_source=source,
        )
        await self.budgets.settle(principal, tokens, call_id=call_id)
        return {
            "recorded": True,
            "session": principal.sid,
            "model": report.model,
            "tokens": tokens,
            "cost_usd": cost,
            "cost_source": source,
        }


def parse(body: bytes) -> UsageReport:
    """A usage report from a request body.

    Raises:
        ValueError: one line naming what is wrong.
    """
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object {model, input_tokens, output_tokens, cost_usd?}")
    try:
        return UsageReport.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"{field}: {reason}") from None


async def _body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(code: str, description: str) -> dict[str, str]:
    return {"error": code, "error_description": description}
