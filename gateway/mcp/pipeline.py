"""The per-call pipeline: every request that reaches an upstream, each in one function read top to bottom.

    Pipeline.call_tool   gate -> constraints -> reserve -> audit tool.call (durable)
                         -> upstream -> meter, settle -> audit tool.result

The gate is the view's (`View.exposes`, reached through `View.resolve_tool`): the one function
tools/list shows tools through, so what an agent can list is exactly what it can call. The grant's
argument constraints (`policy.decide`) are asked only of a call the gate let through.

`read_resource`, `get_prompt` and `complete` sit beside it and take the same path: the gate
(`View.resolve_uri` / `resolve_prompt`), a budget check instead of a reservation (a stopped session
stays stopped), a durable `resource.read` / `prompt.get` / `completion.complete` record before
forwarding, then the upstream, metering, settlement and one outcome record (`RESULT_EVENTS`).
`list_tools` and `set_level` are here too: what they record is the pipeline's.

Pausing for input: a 2026-07-28 client cannot be asked questions mid-request, so the front passes
`pause` (Exchanges.start, bound to the request's session and leg): everything up to the durable
record runs in the request, and the forward runs in an exchange that outlives it.

Refusals are raised as the exceptions of gateway/errors.py, each carrying its wire code; the MCP
front's `map_errors` answers them. On tools/call a stop, a broken constraint and a down upstream
are tool results instead (`isError`), as the Errors table says.

Every allow gets exactly one outcome record: the upstream's (ok, tool_error, error, timeout),
`cancelled` when the client cancels the request, or `revoked` when its session ends mid-call
(`session_ended` cuts the session's calls in flight; the record is written shielded from the
cancellation). A crash leaves allows without one; the next start records them `interrupted`
(audit/interrupted.py).
"""

from __future__ import annotations

import logging
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
from gateway.errors import (
    INVALID_PARAMS,
    LEGACY_RESOURCE_NOT_FOUND,
    AuthError,
    NotFound,
    ResourceNotFound,
    Stopped,
    Unavailable,
    UnknownPrompt,
    UnknownTool,
    UpstreamError,
)
from gateway.identity.policy import decide, host_realpath
from gateway.identity.principal import Principal
from gateway.mcp.scopes import SessionScopes
from gateway.mcp.views import View
from gateway.spend.budgets import Budgets
from gateway.spend.metering import Meter
from gateway.telemetry import OFF, Off, Tracing
from gateway.upstream import Downstream, Upstream, lean

log = logging.getLogger("gateway.pipeline")

MAX_INPUT_ROUNDS = 10

T = TypeVar("T")

Pause = Callable[[Callable[[Downstream], Awaitable[Any]]], Awaitable[Any]]
"""Runs a forward so that it can pause for the client's answers (Exchanges.start, bound to the request)."""

Send = Callable[[ClientSession, types.InputResponses | None, str | None], Awaitable[Any]]
"""One request on the upstream's session, given the input responses and requestState of the round (None on
the first)."""

Round = Callable[[types.InputResponses | None, str | None], Awaitable[Any]]
"""One round of a forward: the upstream request, given the round's input responses and requestState."""

CUT_ERRORS = {
    "cancelled": "the request was cancelled before the upstream answered (by the client, or a shutdown)",
    "revoked": "the agent session ended during the call",
}


def error_result(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True, _meta=meta)


def stop_result(stop: Stopped) -> types.CallToolResult:
    """A stop on tools/call: a tool result telling the agent plainly to stop, the detail under `_meta`."""
    return error_result(str(stop), stop.rpc_data())


@dataclass
class Admitted:
    """A request that passed every check and whose allow record is written: ready to forward."""

    principal: Principal
    upstream: Upstream
    event: Event  # the allow record's; RESULT_EVENTS names the outcome's
    name: str  # what is asked for, as the upstream names it: the tool, the URI or the prompt
    fields: dict[str, Any]  # identity, request fields, server, what was asked for, call_id: every record's
    request_tokens: int
    audit_seq: int | None = None  # the seq of its durable allow record
    started: float = field(default_factory=time.perf_counter)
    recorded: bool = False  # its outcome is written: never a second one

    @property
    def call_id(self) -> str:
        return str(self.fields["call_id"])


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

    # ------------------------------------------------------------ tools

    async def list_tools(self, view: View, principal: Principal, context: dict[str, Any]) -> list[types.Tool]:
        """tools/list: the tools the gate shows this grant, recorded with how many there were."""
        tools = view.tools(principal.grant)
        await self.audit.emit(
            Event.TOOLS_LISTED, **principal.audit_fields(), **context, server=view.server, count=len(tools)
        )
        return tools

    async def call_tool(
        self,
        view: View,
        principal: Principal,
        exposed: str,
        arguments: dict[str, Any] | None,
        context: dict[str, Any],
        downstream: Downstream,
        pause: Pause | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """One tools/call of `exposed` (the name as `view` shows it), end to end.

        `context` holds the request's audit fields; `downstream` is the agent behind the request, where the
        call's progress, logs and questions go. With `pause`, the forward runs through it (see the module).

        Raises:
            UnknownTool: the tool is not granted, or does not exist.
            AuthError: the session ended since the request was authenticated (recorded as a denial), or
                during the call (recorded `revoked`).
            AuditUnavailable, StoreUnavailable: the call cannot be recorded or checked; nothing was forwarded.
            MCPError: the upstream's own error answer, or the agent's answer to one of its questions.
        """
        identity = {**principal.audit_fields(), **context, "call_id": secrets.token_hex(8)}
        target = view.resolve_tool(principal.grant, exposed)  # the gate
        if target is None:  # not granted, or no such tool: one answer for both (the rate limit counts it too)
            limited = await self._denied(
                Event.TOOL_CALL, principal, {**identity, "tool": exposed}, "unknown_or_not_granted"
            )
            if limited is not None:  # past the rate limit: the answer is the stop a granted call gets
                return stop_result(limited)
            raise UnknownTool(exposed)
        upstream, tool = target
        identity.update(server=upstream.name, server_owner=upstream.spec.owner, tool=tool)
        before = dict(identity)  # the records before forwarding; the outcome and the input rounds keep to `identity`
        if upstream.spec.log_arguments:  # the manifest opted in: arguments, secret-looking values masked
            before["arguments_masked"] = masked(arguments or {})

        decision = decide(principal.grant, upstream.name, tool, arguments, resolve=host_realpath)  # the constraints
        if not decision.allowed:
            rule = f"{decision.argument}: {decision.rule}"
            limited = await self._denied(Event.TOOL_CALL, principal, before, "argument_constraint", error=rule)
            if limited is not None:
                return stop_result(limited)
            return error_result(
                f"Invalid arguments for tool {exposed}: argument {decision.argument!r} {decision.rule}."
            )

        text = canonical_json(arguments or {})  # metered and fingerprinted as one text
        request_tokens = self.meter.text(text) if arguments else 0
        fingerprint = self.fingerprints.of_bytes(text.encode())
        try:  # the reservation: one atomic statement (session live, within limits, call counted)
            reserved = await self.budgets.reserve(principal, f"{upstream.name}.{tool}", request_tokens, fingerprint)
        except Stopped as stop:
            await self.budgets.record_denial(
                Event.TOOL_CALL, {**before, "decision": "deny", "reason": stop.limit, "request_tokens": request_tokens}
            )
            return stop_result(stop)
        except AuthError:  # the session ended after the edge authenticated this request (a revoke racing it)
            await self.audit.emit(Event.TOOL_CALL, durable=True, **before, decision="deny", reason=SESSION_ENDED)
            raise

        try:  # the durable record, before anything is forwarded (a span only when traces are on)
            written = await self.telemetry.audit_write(
                lambda: self.audit.emit(
                    Event.TOOL_CALL,
                    durable=True,
                    **before,
                    decision="allow",
                    reason="granted",
                    request_tokens=request_tokens,
                    arguments=fingerprint,
                )
            )
        except Unavailable:  # refused after all: it never runs, so it spends nothing
            await self.budgets.release(reserved, identity["call_id"])
            raise
        call = Admitted(principal, upstream, Event.TOOL_CALL, tool, identity, request_tokens, written.get("seq"))

        async def forward(leg: Downstream) -> types.CallToolResult:  # upstream -> meter, settle -> tool.result
            result = await self._cuttable(call, lambda: self._forward_call(call, arguments, leg))
            return view.result_out(upstream.name, result)

        return await (pause(forward) if pause is not None else forward(downstream))

    async def _forward_call(
        self, call: Admitted, arguments: dict[str, Any] | None, downstream: Downstream
    ) -> types.CallToolResult:
        """Call the upstream, resolve any input it asks for, meter, settle and record the outcome.

        A down upstream is the call's result (`isError`); the detail goes to the log and the audit only.
        """
        metered = _MeteredDownstream(downstream, self, call)

        def send(
            responses: types.InputResponses | None, state: str | None
        ) -> Awaitable[types.CallToolResult | types.InputRequiredResult]:
            return self.telemetry.upstream_call(  # a span only when traces are on; meta: the context to pass on
                call,
                lambda meta: call.upstream.request(call.principal, lambda s: one(s, responses, state, meta), metered),
            )

        def one(
            s: ClientSession, responses: types.InputResponses | None, state: str | None, meta: Any
        ) -> Awaitable[types.CallToolResult | types.InputRequiredResult]:
            if responses is None and state is None:  # the first round, built here: sent lean (upstream/lean.py)
                return lean.call_tool(s, call.name, arguments, meta=meta, progress_callback=metered.progress)
            return s.call_tool(
                call.name,
                arguments,
                progress_callback=metered.progress,
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
                meta=meta,
            )

        outcome, error = "ok", None
        try:
            result: types.CallToolResult = await self._rounds(call, send, metered)
            if result.is_error:
                outcome = "tool_error"
        except UpstreamError as exc:
            exc.server = call.upstream.name
            outcome, error = exc.outcome, str(exc)
            result = error_result(exc.for_agent())
        except MCPError as exc:
            await self._record_outcome(call, "error", exc.message, 0)
            raise
        response_tokens = self.meter.count(result)
        await self.budgets.settle(call.principal, response_tokens, call_id=call.call_id)
        await self._record_outcome(call, outcome, error, response_tokens, self.fingerprints.of(result))
        return result

    # ------------------------------------------------------------ resources, prompts, completion

    async def read_resource(
        self,
        view: View,
        principal: Principal,
        uri: str,
        context: dict[str, Any],
        downstream: Downstream,
        pause: Pause | None = None,
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        """resources/read of `uri` as `view` names it; the answer's URIs renamed back the same way.

        Raises:
            ResourceNotFound: not granted, unknown, or the upstream's own not-found.
            Stopped: the session is stopped.
            UpstreamError: the upstream is down, crashed or timed out.
            AuthError, AuditUnavailable, StoreUnavailable, MCPError: as for `call_tool`.
        """
        target = view.resolve_uri(principal.grant, uri)  # the gate
        call = await self._admit(
            Event.RESOURCE_READ, principal, target, {**context, "resource": uri}, 0, ResourceNotFound(uri)
        )

        def send(s: ClientSession, responses: types.InputResponses | None, state: str | None) -> Awaitable[Any]:
            return s.read_resource(call.name, input_responses=responses, request_state=state, allow_input_required=True)

        def out(result: types.ReadResourceResult) -> types.ReadResourceResult:
            server = call.upstream.name
            contents = [c.model_copy(update={"uri": view.uri_out(server, c.uri)}) for c in result.contents]
            return result.model_copy(update={"contents": contents})

        async def forward(leg: Downstream) -> types.ReadResourceResult:
            try:
                return await self._cuttable(call, lambda: self._forward_request(call, send, leg, out))
            except MCPError as exc:  # the upstream's not-found, answered in this client's era and its URI
                if exc.code in (LEGACY_RESOURCE_NOT_FOUND, INVALID_PARAMS):
                    raise ResourceNotFound(uri) from None
                raise

        return await (pause(forward) if pause is not None else forward(downstream))

    async def get_prompt(
        self,
        view: View,
        principal: Principal,
        name: str,
        arguments: dict[str, str] | None,
        context: dict[str, Any],
        downstream: Downstream,
        pause: Pause | None = None,
    ) -> types.GetPromptResult | types.InputRequiredResult:
        """prompts/get, as `read_resource`; the arguments are metered as request tokens.

        Raises:
            UnknownPrompt: not granted, or unknown.
            Stopped, UpstreamError, AuthError, AuditUnavailable, StoreUnavailable, MCPError: as `read_resource`.
        """
        target = view.resolve_prompt(principal.grant, name)  # the gate
        tokens = self.meter.arguments(arguments)
        call = await self._admit(
            Event.PROMPT_GET, principal, target, {**context, "prompt": name}, tokens, UnknownPrompt(name)
        )

        def send(s: ClientSession, responses: types.InputResponses | None, state: str | None) -> Awaitable[Any]:
            return s.get_prompt(
                call.name, arguments, input_responses=responses, request_state=state, allow_input_required=True
            )

        async def forward(leg: Downstream) -> types.GetPromptResult:
            return await self._cuttable(call, lambda: self._forward_request(call, send, leg))

        return await (pause(forward) if pause is not None else forward(downstream))

    async def complete(
        self,
        view: View,
        principal: Principal,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: dict[str, str],
        context_arguments: dict[str, str] | None,
        context: dict[str, Any],
    ) -> types.CompleteResult:
        """completion/complete for a prompt or resource template `view` shows this grant.

        Raises:
            UnknownPrompt, ResourceNotFound: the reference is not granted, or unknown.
            Stopped, UpstreamError, AuthError, AuditUnavailable, StoreUnavailable, MCPError: as `read_resource`.
        """
        missing: NotFound
        if isinstance(ref, types.PromptReference):  # the gate
            target = view.resolve_prompt(principal.grant, ref.name)
            fields: dict[str, Any] = {"prompt": ref.name}
            missing = UnknownPrompt(ref.name)
        else:
            target = view.resolve_uri(principal.grant, ref.uri)
            fields = {"resource": ref.uri}
            missing = ResourceNotFound(ref.uri)
        tokens = self.meter.arguments({"argument": argument, "context": context_arguments})
        call = await self._admit(Event.COMPLETION_COMPLETE, principal, target, {**context, **fields}, tokens, missing)
        key = "name" if isinstance(ref, types.PromptReference) else "uri"
        upstream_ref = ref.model_copy(update={key: call.name})

        def send(s: ClientSession, _responses: types.InputResponses | None, _state: str | None) -> Awaitable[Any]:
            return s.complete(upstream_ref, argument, context_arguments=context_arguments)

        return await self._cuttable(call, lambda: self._forward_request(call, send, None))

    async def _admit(
        self,
        event: Event,
        principal: Principal,
        target: tuple[Upstream, str] | None,
        fields: dict[str, Any],
        request_tokens: int,
        missing: NotFound,
    ) -> Admitted:
        """The gate's answer, then the budget check, each refusal recorded; then the durable allow record."""
        identity = {**principal.audit_fields(), **fields, "call_id": secrets.token_hex(8)}
        if target is None:  # not granted, or no such thing: one answer for both (the rate limit counts it too)
            raise await self._denied(event, principal, identity, "unknown_or_not_granted") or missing
        upstream, name = target
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
        written = await self.audit.emit(
            event, durable=True, **identity, decision="allow", reason="granted", request_tokens=request_tokens
        )
        return Admitted(principal, upstream, event, name, identity, request_tokens, written.get("seq"))

    async def _forward_request(
        self,
        call: Admitted,
        send: Send,
        downstream: Downstream | None,
        out: Callable[[T], T] = lambda result: result,
    ) -> T:
        """Forward an admitted request other than tools/call; meter and settle what crossed, record the outcome.

        `out` renames the answer as the agent's view names it; what it returns is metered and returned.
        """
        metered = _MeteredDownstream(downstream, self, call) if downstream is not None else None

        def once(responses: types.InputResponses | None, state: str | None) -> Awaitable[Any]:
            return call.upstream.request(call.principal, lambda s: send(s, responses, state), downstream)

        try:
            result = out(await self._rounds(call, once, metered))
        except UpstreamError as exc:
            exc.server = call.upstream.name
            await self._settle_request(call, exc.outcome, str(exc))
            raise
        except MCPError as exc:
            await self._settle_request(call, "error", exc.message)
            raise
        await self._settle_request(call, "ok", None, result)
        return result

    async def _settle_request(self, call: Admitted, outcome: str, error: str | None, result: Any = None) -> None:
        """What crossed (the request, and the answer if there is one) counted against the budget, then recorded."""
        tokens = self.meter.count(result) if result is not None else 0
        await self.budgets.settle(call.principal, call.request_tokens + tokens, call_id=call.call_id)
        fingerprint = self.fingerprints.of(result) if result is not None else None
        await self._record_outcome(call, outcome, error, tokens, fingerprint)

    # ------------------------------------------------------------ logging/setLevel

    async def set_level(
        self, view: View, principal: Principal, level: types.LoggingLevel, context: dict[str, Any]
    ) -> None:
        """logging/setLevel, forwarded to this session's own (per-session) connections of the servers its grant
        reaches in `view`.

        Shared connections are not ours to set. Each forward is recorded first (`logging.set_level`,
        durable): a server the agent has nothing on is never told, nor started, and nothing reaches one
        unrecorded. An upstream that fails it is only logged.

        Raises:
            Stopped: the session is stopped (recorded as a denial).
            AuthError, AuditUnavailable, StoreUnavailable: as for `call_tool`.
        """
        fields = {**principal.audit_fields(), **context, "level": level}
        targets = [u for u in view.granted_servers(principal.grant) if u.spec.isolation == "per_session"]
        if targets:  # a stopped session stays stopped, for this method too
            try:
                await self.budgets.check(principal)
            except Stopped as stop:
                await self.audit.emit(
                    Event.LOGGING_SET_LEVEL, durable=True, **fields, decision="deny", reason=stop.limit
                )
                raise
        for upstream in targets:
            await self.audit.emit(
                Event.LOGGING_SET_LEVEL, durable=True, **fields, server=upstream.name, decision="allow"
            )
            try:
                await upstream.request(principal, lambda s: s.set_logging_level(level))
            except (UpstreamError, MCPError) as exc:
                log.info("setLevel on %s failed: %s", upstream.name, exc)

    # ------------------------------------------------------------ the steps every forward shares

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

    async def _rounds(self, call: Admitted, send: Round, asked: Downstream | None) -> Any:
        """Send the request; while the upstream answers `InputRequiredResult` (2026-07-28), ask `asked` ourselves,
        so the upstream's requestState never leaves the gateway, and send it again with the answers.

        Raises:
            UpstreamError: the upstream failed, asked on a request that cannot carry questions, or asked
                more than MAX_INPUT_ROUNDS times.
        """
        name = call.upstream.name
        responses: types.InputResponses | None = None
        state: str | None = None
        for _ in range(MAX_INPUT_ROUNDS + 1):
            result = await send(responses, state)
            if not isinstance(result, types.InputRequiredResult):
                return result
            if asked is None:
                raise UpstreamError(f"upstream server {name!r} asked for input on a request that cannot carry it")
            responses, state = await answers(result, asked), result.request_state
        raise UpstreamError(f"upstream server {name!r} asked for input more than {MAX_INPUT_ROUNDS} times")

    async def _record_outcome(
        self, call: Admitted, outcome: str, error: str | None, tokens: int, fingerprint: str | None = None
    ) -> None:
        if call.recorded:
            return
        call.recorded = True
        await self.audit.emit(
            RESULT_EVENTS[call.event],
            **call.fields,
            outcome=outcome,
            error=error,
            request_tokens=call.request_tokens,
            response_tokens=tokens,
            latency_ms=round((time.perf_counter() - call.started) * 1000, 3),
            result=fingerprint,
        )

    # ------------------------------------------------------------ cancellation and session end

    def session_ended(self, sid: str) -> None:
        """The session ended: cut its forwards in flight now (each records `revoked`)."""
        self._in_flight.cancel(sid)

    async def _cuttable(self, call: Admitted, run: Callable[[], Awaitable[T]]) -> T:
        """Run a forward that the end of its session cuts; a cancellation is recorded before it goes on.

        Raises:
            AuthError: the session ended during the forward.
        """
        with self._in_flight.open(call.principal.sid) as scope:
            try:
                return await run()
            except anyio.get_cancelled_exc_class():
                outcome = "revoked" if scope.cancel_called else "cancelled"
                with anyio.CancelScope(shield=True):
                    await self._record_outcome(call, outcome, CUT_ERRORS[outcome], 0)
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
    """Counts and records what a request's server-initiated requests carry (sampling both ways)."""

    _EVENTS = {
        "sampling/createMessage": Event.SAMPLING_REQUEST,
        "elicitation/create": Event.ELICITATION_REQUEST,
        "roots/list": Event.ROOTS_REQUEST,
    }

    def __init__(self, inner: Downstream, pipeline: Pipeline, call: Admitted) -> None:
        self.inner = inner
        self.sid = inner.sid
        self.pipeline = pipeline
        self.call = call  # the call or request the rounds belong to: its identity goes on each record

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        meter = self.pipeline.meter
        sent = meter.count(request.params)
        answer = await self.inner.ask(request, key)
        received = 0 if isinstance(answer, types.ErrorData) else meter.count(answer)
        await self.pipeline.budgets.settle(self.call.principal, sent + received)
        await self.pipeline.audit.emit(
            self._EVENTS.get(request.method, Event.INPUT_REQUEST),
            **self.call.fields,
            request_tokens=sent,
            response_tokens=received,
            outcome="error" if isinstance(answer, types.ErrorData) else "ok",
        )
        return answer

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        await self.inner.progress(progress, total, message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self.inner.log(params)
