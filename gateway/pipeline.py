"""The per-call pipeline: one tools/call, end to end, top to bottom.

    decide -> reserve -> audit tool.call (durable) -> upstream -> meter, settle -> audit tool.result

`admit` runs the checks that may refuse (nothing is forwarded if they do);
`forward` calls the upstream and accounts for what came back. The front runs
them back to back, or, for a 2026-07-28 client whose call must pause for
input, runs `forward` in an exchange that outlives the first request.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.audit import Audit
from gateway.audit.records import Fingerprints, canonical_json, masked
from gateway.budgets import Budgets, stop_detail
from gateway.errors import Stopped, UpstreamError
from gateway.metering import Meter
from gateway.policy import NOT_GRANTED, decide, host_realpath
from gateway.principal import Principal
from gateway.upstream import Downstream, Upstream

MAX_INPUT_ROUNDS = 10


def unknown_tool(name: str) -> MCPError:
    """The one answer for a tool that is not granted and a tool that does not exist."""
    return MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


def error_result(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True, _meta=meta)


@dataclass
class Admitted:
    """A call that passed every check and was recorded; ready to forward."""

    principal: Principal
    upstream: Upstream
    tool: str
    arguments: dict[str, Any] | None
    call_id: str
    request_tokens: int
    context: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)

    def audit_fields(self) -> dict[str, Any]:
        return {
            **self.principal.audit_fields(),
            **self.context,
            "server": self.upstream.name,
            "tool": self.tool,
            "call_id": self.call_id,
        }


class Pipeline:
    def __init__(
        self,
        budgets: Budgets,
        audit: Audit,
        fingerprints: Fingerprints,
        meter: Meter,
    ) -> None:
        self.budgets = budgets
        self.audit = audit
        self.fingerprints = fingerprints
        self.meter = meter

    async def admit(
        self,
        principal: Principal,
        exposed: str,
        target: tuple[Upstream, str] | None,
        arguments: dict[str, Any] | None,
        context: dict[str, Any],
    ) -> Admitted | types.CallToolResult:
        """Decide, reserve and record a call. Returns the refusal result, or the admitted call.

        Raises:
            MCPError: `Unknown tool` for a tool that is not granted or does not exist.
            AuditUnavailable, StoreUnavailable: the call cannot be recorded or checked.
        """
        call_id = secrets.token_hex(8)
        identity = {**principal.audit_fields(), **context, "call_id": call_id}
        if target is None:  # not granted, or no such tool: one answer for both
            await self.audit.emit("tool.call", durable=True, **identity, tool=exposed, decision="deny",
                                  reason="unknown_or_not_granted")
            raise unknown_tool(exposed)
        upstream, tool = target
        identity.update(server=upstream.name, tool=tool)
        if upstream.spec.log_arguments:  # the manifest opted in: arguments, secret-looking values masked
            identity["arguments_masked"] = masked(arguments or {})
        decision = decide(principal.grant, upstream.name, tool, arguments, resolve=host_realpath)
        if decision is NOT_GRANTED:  # the view already checked; kept so the gate never depends on the caller
            raise unknown_tool(exposed)
        if not decision.allowed:
            await self.audit.emit("tool.call", durable=True, **identity, decision="deny",
                                  reason="argument_constraint", error=f"{decision.argument}: {decision.rule}")
            return error_result(
                f"Invalid arguments for tool {exposed}: argument {decision.argument!r} {decision.rule}."
            )
        text = canonical_json(arguments or {})  # metered and fingerprinted as one text
        request_tokens = self.meter.text(text) if arguments else 0
        fingerprint = self.fingerprints.of_bytes(text.encode())
        try:
            await self.budgets.reserve(principal, f"{upstream.name}.{tool}", request_tokens, fingerprint)
        except Stopped as stop:
            await self.audit.emit("tool.call", durable=True, **identity, decision="deny", reason=stop.limit,
                                  request_tokens=request_tokens)
            return error_result(str(stop), stop_detail(stop))
        await self.audit.emit(
            "tool.call", durable=True, **identity, decision="allow", reason="granted",
            request_tokens=request_tokens, arguments=fingerprint,
        )
        return Admitted(principal, upstream, tool, arguments, call_id, request_tokens, context)

    async def forward(self, call: Admitted, downstream: Downstream) -> types.CallToolResult:
        """Call the upstream, resolve any input it asks for, meter, settle and record the result."""
        metered = _MeteredDownstream(downstream, self, call)
        outcome, error = "ok", None
        try:
            result = await self._call(call, metered)
            if result.is_error:
                outcome = "tool_error"
        except UpstreamError as exc:
            outcome, error = exc.outcome, str(exc)
            result = error_result(f"The tool server is unavailable: {exc}. The call was not completed.")
        except MCPError as exc:
            outcome, error = "error", exc.message
            await self._record_result(call, outcome, error, 0)
            raise
        response_tokens = self.meter.count(result)
        await self.budgets.settle(call.principal, response_tokens)
        await self._record_result(call, outcome, error, response_tokens, self.fingerprints.of(result))
        return result

    async def _call(self, call: Admitted, downstream: Downstream) -> types.CallToolResult:
        upstream, tool, arguments = call.upstream, call.tool, call.arguments
        responses: types.InputResponses | None = None
        state: str | None = None
        for _ in range(MAX_INPUT_ROUNDS + 1):
            result = await upstream.request(
                call.principal,
                lambda s: s.call_tool(
                    tool, arguments, progress_callback=downstream.progress, input_responses=responses,
                    request_state=state, allow_input_required=True,
                ),
                downstream,
            )
            if not isinstance(result, types.InputRequiredResult):
                return result
            # The upstream wants input (2026-07-28): ask the agent ourselves, so the upstream's
            # requestState never leaves the gateway.
            responses = {}
            for key, request in (result.input_requests or {}).items():
                answer = await downstream.ask(request)
                if isinstance(answer, types.ErrorData):
                    raise MCPError.from_error_data(answer)
                responses[key] = answer
            state = result.request_state
        raise UpstreamError(f"upstream server {upstream.name!r} asked for input more than {MAX_INPUT_ROUNDS} times")

    async def _record_result(
        self, call: Admitted, outcome: str, error: str | None, tokens: int, fingerprint: str | None = None
    ) -> None:
        await self.audit.emit(
            "tool.result", **call.audit_fields(), outcome=outcome, error=error,
            request_tokens=call.request_tokens, response_tokens=tokens,
            latency_ms=round((time.perf_counter() - call.started) * 1000, 3),
            result=fingerprint,
        )


class _MeteredDownstream:
    """Counts and records what a call's server-initiated requests carry (sampling both ways)."""

    _EVENTS = {
        "sampling/createMessage": "sampling.request",
        "elicitation/create": "elicitation.request",
        "roots/list": "roots.request",
    }

    def __init__(self, inner: Downstream, pipeline: Pipeline, call: Admitted) -> None:
        self.inner = inner
        self.sid = inner.sid
        self.pipeline = pipeline
        self.call = call

    async def ask(self, request: types.InputRequest) -> types.InputResponse | types.ErrorData:
        meter = self.pipeline.meter
        sent = meter.count(request.params)
        answer = await self.inner.ask(request)
        received = 0 if isinstance(answer, types.ErrorData) else meter.count(answer)
        await self.pipeline.budgets.settle(self.call.principal, sent + received)
        await self.pipeline.audit.emit(
            self._EVENTS.get(request.method, "input.request"), **self.call.audit_fields(),
            request_tokens=sent, response_tokens=received,
            outcome="error" if isinstance(answer, types.ErrorData) else "ok",
        )
        return answer

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        await self.inner.progress(progress, total, message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self.inner.log(params)
