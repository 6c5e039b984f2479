"""The per-call pipeline: one tools/call, end to end, top to bottom.

    decide -> reserve -> audit tool.call (durable) -> upstream -> meter, settle -> audit tool.result

`admit` runs the checks that may refuse (nothing is forwarded if they do);
`forward` calls the upstream and accounts for what came back. The front runs
them back to back, or, for a 2026-07-28 client whose call must pause for
input, runs `forward` in an exchange that outlives the first request.

Every other method that reaches an upstream (`read_resource`, `get_prompt`,
`complete`) takes the same path in one step: the grant, a budget check (a
stopped session stays stopped), a durable `resource.read` / `prompt.get` /
`completion.complete` record before forwarding, then metering, settlement and
one outcome record (`RESULT_EVENTS`).

Every allow gets exactly one outcome record: the upstream's (ok, tool_error,
error, timeout), `cancelled` when the client cancels the request, or `revoked`
when its session ends mid-call (`session_ended` cuts the session's calls in
flight; the record is written shielded from the cancellation). A crash leaves
allows without one; the next start records them `interrupted` (audit/interrupted.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError

from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.audit.records import RESULT_EVENTS, SESSION_ENDED, Fingerprints, masked
from gateway.canonical import canonical_json
from gateway.errors import AuthError, Stopped, Unavailable, UpstreamError
from gateway.identity.policy import NOT_GRANTED, decide, host_realpath
from gateway.identity.principal import Principal
from gateway.mcp.scopes import SessionScopes
from gateway.spend.budgets import Budgets, stop_detail
from gateway.spend.metering import Meter
from gateway.telemetry import OFF, Off, Tracing
from gateway.upstream import Downstream, Upstream

MAX_INPUT_ROUNDS = 10

T = TypeVar("T")

CUT_ERRORS = {
    "cancelled": "the request was cancelled before the upstream answered (by the client, or a shutdown)",
    "revoked": "the agent session ended during the call",
}


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
    recorded: bool = False  # its tool.result is written: never a second one
    audit_seq: int | None = None  # the seq of its durable tool.call record

    def audit_fields(self) -> dict[str, Any]:
        return {
            **self.principal.audit_fields(),
            **self.context,
            "server": self.upstream.name,
            "server_owner": self.upstream.spec.owner,  # the manifest's owner: who answers for this tool
            "tool": self.tool,
            "call_id": self.call_id,
        }


@dataclass
class AdmittedRequest:
    """A resources/read, prompts/get or completion/complete that passed its checks and was recorded."""

    principal: Principal
    upstream: Upstream
    event: Event  # the record written before forwarding; RESULT_EVENTS names the one after
    fields: dict[str, Any]  # identity, request fields, server, what was asked for, call_id
    request_tokens: int
    started: float = field(default_factory=time.perf_counter)
    recorded: bool = False


class Pipeline:
    def __init__(
        self,
        budgets: Budgets,
        audit: Audit,
        fingerprints: Fingerprints,
        meter: Meter,
        telemetry: Off | Tracing = OFF,
    ) -> None:
        self.budgets = budgets
        self.audit = audit
        self.fingerprints = fingerprints
        self.meter = meter
        self._in_flight = SessionScopes()  # the forwards a session's end cuts
        self.telemetry = telemetry

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
            AuthError: the session ended since the request was authenticated (recorded as a denial).
            AuditUnavailable, StoreUnavailable: the call cannot be recorded or checked.
        """
        call_id = secrets.token_hex(8)
        identity = {**principal.audit_fields(), **context, "call_id": call_id}
        if target is None:  # not granted, or no such tool: one answer for both (the rate limit counts it too)
            identity["tool"] = exposed
            limited = await self._denied(Event.TOOL_CALL, principal, identity, "unknown_or_not_granted")
            if limited is not None:  # past the rate limit: the answer is the stop a granted call gets
                return error_result(str(limited), stop_detail(limited))
            raise unknown_tool(exposed)
        upstream, tool = target
        identity.update(server=upstream.name, server_owner=upstream.spec.owner, tool=tool)
        if upstream.spec.log_arguments:  # the manifest opted in: arguments, secret-looking values masked
            identity["arguments_masked"] = masked(arguments or {})
        decision = decide(principal.grant, upstream.name, tool, arguments, resolve=host_realpath)
        if decision is NOT_GRANTED:  # the view already checked; kept so the gate never depends on the caller
            raise unknown_tool(exposed)
        if not decision.allowed:
            limited = await self._denied(
                Event.TOOL_CALL,
                principal,
                identity,
                "argument_constraint",
                error=f"{decision.argument}: {decision.rule}",
            )
            if limited is not None:
                return error_result(str(limited), stop_detail(limited))
            return error_result(
                f"Invalid arguments for tool {exposed}: argument {decision.argument!r} {decision.rule}."
            )
        text = canonical_json(arguments or {})  # metered and fingerprinted as one text
        request_tokens = self.meter.text(text) if arguments else 0
        fingerprint = self.fingerprints.of_bytes(text.encode())
        try:
            reserved = await self.budgets.reserve(principal, f"{upstream.name}.{tool}", request_tokens, fingerprint)
        except Stopped as stop:
            await self.budgets.record_denial(
                Event.TOOL_CALL,
                {**identity, "decision": "deny", "reason": stop.limit, "request_tokens": request_tokens},
            )
            return error_result(str(stop), stop_detail(stop))
        except AuthError:  # the session ended after the edge authenticated this request (a revoke racing it)
            await self.audit.emit(Event.TOOL_CALL, durable=True, **identity, decision="deny", reason=SESSION_ENDED)
            raise
        try:
            record = await self.telemetry.audit_write(
                lambda: self.audit.emit(  # a span only when traces are on
                    Event.TOOL_CALL,
                    durable=True,
                    **identity,
                    decision="allow",
                    reason="granted",
                    request_tokens=request_tokens,
                    arguments=fingerprint,
                )
            )
        except Unavailable:  # refused after all: it never runs, so it spends nothing
            await self.budgets.release(reserved, call_id)
            raise
        return Admitted(
            principal, upstream, tool, arguments, call_id, request_tokens, context, audit_seq=record.get("seq")
        )

    async def _denied(
        self, event: Event, principal: Principal, identity: dict[str, Any], reason: str, **detail: Any
    ) -> Stopped | None:
        """Record a request denied before any reservation. It counts against the rate limit; past the
        limit, the rate-limit stop is recorded and returned: the caller answers it instead of the denial."""
        limited = await self.budgets.count_denial(principal)
        if limited is not None:
            await self.budgets.record_denial(event, {**identity, "decision": "deny", "reason": limited.limit})
            return limited
        await self.budgets.record_denial(event, {**identity, "decision": "deny", "reason": reason, **detail})
        return None

    async def forward(self, call: Admitted, downstream: Downstream) -> types.CallToolResult:
        """Forward an admitted call; whatever ends it, it gets exactly one `tool.result`.

        Raises:
            AuthError: its session ended during the call (recorded `revoked`).
        """

        async def cut(outcome: str) -> None:
            await self._record_result(call, outcome, CUT_ERRORS[outcome], 0)

        return await self._cuttable(call.principal.sid, lambda: self._forward(call, downstream), cut)

    async def _forward(self, call: Admitted, downstream: Downstream) -> types.CallToolResult:
        """Call the upstream, resolve any input it asks for, meter, settle and record the result."""
        metered = _MeteredDownstream(downstream, self, call.principal, call.audit_fields())
        outcome, error = "ok", None
        try:
            result = await self._call(call, metered)
            if result.is_error:
                outcome = "tool_error"
        except UpstreamError as exc:
            outcome, error = exc.outcome, str(exc)
            result = error_result(exc.for_agent(call.upstream.name))  # the detail goes to the log and the audit only
        except MCPError as exc:
            outcome, error = "error", exc.message
            await self._record_result(call, outcome, error, 0)
            raise
        response_tokens = self.meter.count(result)
        await self.budgets.settle(call.principal, response_tokens, call_id=call.call_id)
        await self._record_result(call, outcome, error, response_tokens, self.fingerprints.of(result))
        return result

    async def _call(self, call: Admitted, downstream: Downstream) -> types.CallToolResult:
        upstream, tool, arguments = call.upstream, call.tool, call.arguments
        responses: types.InputResponses | None = None
        state: str | None = None
        for _ in range(MAX_INPUT_ROUNDS + 1):

            def send(
                meta: types.RequestParamsMeta | None,
                responses: types.InputResponses | None = responses,
                state: str | None = state,
            ) -> Awaitable[types.CallToolResult | types.InputRequiredResult]:
                return upstream.request(  # meta: the trace context to pass on
                    call.principal,
                    lambda s: s.call_tool(
                        tool,
                        arguments,
                        progress_callback=downstream.progress,
                        input_responses=responses,
                        request_state=state,
                        allow_input_required=True,
                        meta=meta,
                    ),
                    downstream,
                )

            result = await self.telemetry.upstream_call(call, send)
            if not isinstance(result, types.InputRequiredResult):
                return result
            # The upstream wants input (2026-07-28): ask the agent ourselves, so the upstream's
            # requestState never leaves the gateway.
            responses, state = await answers(result, downstream), result.request_state
        raise UpstreamError(f"upstream server {upstream.name!r} asked for input more than {MAX_INPUT_ROUNDS} times")

    async def _record_result(
        self, call: Admitted, outcome: str, error: str | None, tokens: int, fingerprint: str | None = None
    ) -> None:
        if call.recorded:
            return
        call.recorded = True
        await self.audit.emit(
            Event.TOOL_RESULT,
            **call.audit_fields(),
            outcome=outcome,
            error=error,
            request_tokens=call.request_tokens,
            response_tokens=tokens,
            latency_ms=round((time.perf_counter() - call.started) * 1000, 3),
            result=fingerprint,
        )

    # ------------------------------------------------------------ resources, prompts, completion

    async def read_resource(
        self,
        principal: Principal,
        uri: str,
        target: tuple[Upstream, str] | None,
        context: dict[str, Any],
        missing: MCPError,
        out: Callable[[types.ReadResourceResult], types.ReadResourceResult],
        downstream: Downstream | None = None,
    ) -> types.ReadResourceResult:
        """resources/read: `uri` as the agent named it, `target` the upstream and its own URI (None: not granted).

        `out` renames the answer as the agent's view names resources; what it returns is metered and returned.

        Raises:
            MCPError: `missing` (not granted or unknown), or the upstream's own error.
            Stopped: the session is stopped.
            UpstreamError: the upstream is down, crashed or timed out.
            AuthError, AuditUnavailable, StoreUnavailable: as for `admit`.
        """
        upstream, upstream_uri = target or (None, uri)
        request = await self._admit_request(
            Event.RESOURCE_READ, principal, upstream, {**context, "resource": uri}, 0, missing
        )
        return await self._forward_request(
            request,
            lambda s, responses, state: s.read_resource(
                upstream_uri,
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
            ),
            out,
            downstream,
        )

    async def get_prompt(
        self,
        principal: Principal,
        name: str,
        target: tuple[Upstream, str] | None,
        arguments: dict[str, str] | None,
        context: dict[str, Any],
        missing: MCPError,
        downstream: Downstream | None = None,
    ) -> types.GetPromptResult:
        """prompts/get, as `read_resource`; the arguments are metered as request tokens.

        Raises:
            MCPError, Stopped, UpstreamError, AuthError, AuditUnavailable, StoreUnavailable: as `read_resource`.
        """
        upstream, upstream_name = target or (None, name)
        tokens = self.meter.arguments(arguments)
        request = await self._admit_request(
            Event.PROMPT_GET, principal, upstream, {**context, "prompt": name}, tokens, missing
        )
        return await self._forward_request(
            request,
            lambda s, responses, state: s.get_prompt(
                upstream_name,
                arguments,
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
            ),
            downstream=downstream,
        )

    async def complete(
        self,
        principal: Principal,
        fields: dict[str, Any],
        upstream: Upstream | None,
        send: Callable[[ClientSession], Awaitable[types.CompleteResult]],
        metered: dict[str, Any],
        missing: MCPError,
    ) -> types.CompleteResult:
        """completion/complete for a prompt or resource template the grant covers (`upstream` None: it does not).

        `fields` name the reference (`prompt` or `resource`); `metered` is what the request carries.

        Raises:
            MCPError, Stopped, UpstreamError, AuthError, AuditUnavailable, StoreUnavailable: as `read_resource`.
        """
        request = await self._admit_request(
            Event.COMPLETION_COMPLETE, principal, upstream, fields, self.meter.arguments(metered), missing
        )
        return await self._forward_request(request, lambda s, _responses, _state: send(s))

    async def _admit_request(
        self,
        event: Event,
        principal: Principal,
        upstream: Upstream | None,
        fields: dict[str, Any],
        request_tokens: int,
        missing: MCPError,
    ) -> AdmittedRequest:
        """The grant, then the budget check, each refusal recorded; then the durable allow record."""
        identity = {**principal.audit_fields(), **fields, "call_id": secrets.token_hex(8)}
        if upstream is None:  # not granted, or no such thing: one answer for both (the rate limit counts it too)
            raise await self._denied(event, principal, identity, "unknown_or_not_granted") or missing
        identity["server"] = upstream.name
        try:
            await self.budgets.check(principal)  # no call is counted, but a stopped session stays stopped
        except Stopped as stop:  # recorded like a tools/call stop: in full up to denials_per_minute, then counted
            await self.budgets.record_denial(
                event, {**identity, "decision": "deny", "reason": stop.limit, "request_tokens": request_tokens}
            )
            raise
        except AuthError:
            await self.audit.emit(event, durable=True, **identity, decision="deny", reason=SESSION_ENDED)
            raise
        await self.audit.emit(
            event, durable=True, **identity, decision="allow", reason="granted", request_tokens=request_tokens
        )
        return AdmittedRequest(principal, upstream, event, identity, request_tokens)

    async def _forward_request(
        self,
        request: AdmittedRequest,
        send: Callable[[ClientSession, Any, str | None], Awaitable[Any]],
        out: Callable[[T], T] = lambda result: result,
        downstream: Downstream | None = None,
    ) -> T:
        """Forward an admitted request; an upstream's `InputRequiredResult` rounds are asked of `downstream`
        (prompts/get and resources/read may pause for input as tools/call does)."""

        async def rounds() -> T:
            responses: types.InputResponses | None = None
            state: str | None = None
            for _ in range(MAX_INPUT_ROUNDS + 1):

                def once(s: ClientSession, r: types.InputResponses | None = responses, st: str | None = state) -> Any:
                    return send(s, r, st)

                result = await request.upstream.request(request.principal, once, downstream)
                if not isinstance(result, types.InputRequiredResult):
                    return result  # type: ignore[no-any-return]
                if downstream is None:
                    raise UpstreamError(
                        f"upstream server {request.upstream.name!r} asked for input on a request that cannot carry it"
                    )
                metered = _MeteredDownstream(downstream, self, request.principal, request.fields)
                responses, state = await answers(result, metered), result.request_state
            raise UpstreamError(
                f"upstream server {request.upstream.name!r} asked for input more than {MAX_INPUT_ROUNDS} times"
            )

        async def forward() -> T:
            try:
                result = out(await rounds())
            except UpstreamError as exc:
                await self._settle_request(request, exc.outcome, str(exc))
                raise
            except MCPError as exc:
                await self._settle_request(request, "error", exc.message)
                raise
            await self._settle_request(request, "ok", None, result)
            return result

        async def cut(outcome: str) -> None:
            await self._record_request(request, outcome, CUT_ERRORS[outcome], 0, None)

        return await self._cuttable(request.principal.sid, forward, cut)

    async def _settle_request(
        self, request: AdmittedRequest, outcome: str, error: str | None, result: Any = None
    ) -> None:
        """What crossed (the request, and the answer if there is one) counted against the budget, then recorded."""
        tokens = self.meter.count(result) if result is not None else 0
        await self.budgets.settle(request.principal, request.request_tokens + tokens, call_id=request.fields["call_id"])
        fingerprint = self.fingerprints.of(result) if result is not None else None
        await self._record_request(request, outcome, error, tokens, fingerprint)

    async def _record_request(
        self, request: AdmittedRequest, outcome: str, error: str | None, tokens: int, fingerprint: str | None
    ) -> None:
        if request.recorded:
            return
        request.recorded = True
        await self.audit.emit(
            RESULT_EVENTS[request.event],
            **request.fields,
            outcome=outcome,
            error=error,
            request_tokens=request.request_tokens,
            response_tokens=tokens,
            latency_ms=round((time.perf_counter() - request.started) * 1000, 3),
            result=fingerprint,
        )

    # ------------------------------------------------------------ cancellation and session end

    def session_ended(self, sid: str) -> None:
        """The session ended: cut its forwards in flight now (each records `revoked`)."""
        self._in_flight.cancel(sid)

    async def _cuttable(
        self, sid: str, run: Callable[[], Awaitable[T]], record_cut: Callable[[str], Awaitable[None]]
    ) -> T:
        """Run a forward that the end of session `sid` cuts; a cancellation is recorded before it goes on.

        `record_cut(outcome)` writes the outcome record unless one is written already.

        Raises:
            AuthError: the session ended during the forward.
        """
        with self._in_flight.open(sid) as scope:
            try:
                return await run()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await record_cut("revoked" if scope.cancel_called else "cancelled")
                raise
        # Only our own scope was cancelled, and it swallowed the cancellation: the session ended
        # (recorded `revoked` above, on the way out).
        raise AuthError("session ended")


async def answers(result: types.InputRequiredResult, downstream: Downstream) -> types.InputResponses:
    """Ask the agent every request of one `InputRequiredResult` round at once, under the upstream's keys.

    Raises:
        MCPError: the agent answered one of them with an error (passed on as the call's error).
    """
    requests = result.input_requests or {}
    got: dict[str, types.InputResponse | types.ErrorData] = {}

    async def one(key: str, request: types.InputRequest) -> None:
        got[key] = await downstream.ask(request, key)

    async with anyio.create_task_group() as tg:
        for key, request in requests.items():
            tg.start_soon(one, key, request)
    responses: types.InputResponses = {}
    for key in requests:
        answer = got[key]
        if isinstance(answer, types.ErrorData):
            raise MCPError.from_error_data(answer)
        responses[key] = answer
    return responses


class _MeteredDownstream:
    """Counts and records what a call's server-initiated requests carry (sampling both ways)."""

    _EVENTS = {
        "sampling/createMessage": Event.SAMPLING_REQUEST,
        "elicitation/create": Event.ELICITATION_REQUEST,
        "roots/list": Event.ROOTS_REQUEST,
    }

    def __init__(self, inner: Downstream, pipeline: Pipeline, principal: Principal, fields: dict[str, Any]) -> None:
        self.inner = inner
        self.sid = inner.sid
        self.pipeline = pipeline
        self.principal = principal
        self.fields = fields  # the identity of the call or request the rounds belong to

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        meter = self.pipeline.meter
        sent = meter.count(request.params)
        answer = await self.inner.ask(request, key)
        received = 0 if isinstance(answer, types.ErrorData) else meter.count(answer)
        await self.pipeline.budgets.settle(self.principal, sent + received)
        await self.pipeline.audit.emit(
            self._EVENTS.get(request.method, Event.INPUT_REQUEST),
            **self.fields,
            request_tokens=sent,
            response_tokens=received,
            outcome="error" if isinstance(answer, types.ErrorData) else "ok",
        )
        return answer

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        await self.inner.progress(progress, total, message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self.inner.log(params)
