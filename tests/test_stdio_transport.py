"""A stdio upstream's own transport (gateway/upstream/stdio.py), against real servers over real pipes: the first
round of a tools/call goes straight to the pipe, never through the SDK dispatcher, and answers, fails, times
out and is cancelled exactly as the dispatcher path is."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pydantic_core
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from opentelemetry import trace

from gateway.upstream import lanes, lean
from gateway.upstream.stdio import StdioTransport
from tests.support.harness import EVERYTHING, SERVERS, dynamic_manifest, running_gateway
from tests.test_upstream import AGENTS, children_running

pytestmark = pytest.mark.anyio

EVERYTHING_STDIO = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
DYNAMIC = StdioServerParameters(command=sys.executable, args=[str(SERVERS / "dynamic.py")])


class Wire:
    """What a transport wrote to the server's stdin, line by line, with an event per method sent."""

    def __init__(self, transport: StdioTransport) -> None:
        self.lines: list[dict[str, Any]] = []
        self.sent: dict[str, anyio.Event] = {}
        send = transport._send

        async def recording(data: bytes) -> None:
            await send(data)
            message = pydantic_core.from_json(data)
            self.lines.append(message)
            self.event(message.get("method", "")).set()

        transport._send = recording  # type: ignore[method-assign]

    def event(self, method: str) -> anyio.Event:
        return self.sent.setdefault(method, anyio.Event())


class Dispatched:
    """The methods a session's SDK dispatcher was asked to send."""

    def __init__(self, session: ClientSession) -> None:
        self.methods: list[str] = []
        send = session._dispatcher.send_raw_request

        async def recording(method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            self.methods.append(method)
            return await send(method, *args, **kwargs)

        session._dispatcher.send_raw_request = recording  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def connected(server: StdioServerParameters) -> AsyncIterator[tuple[ClientSession, StdioTransport, Wire]]:
    with open(os.devnull, "w") as errlog:
        transport = StdioTransport(server, errlog)
        async with Client(transport.open(), cache=None) as client:
            lanes.bind(client.session, transport)
            yield client.session, transport, Wire(transport)


def slow(session: ClientSession, seconds: float = 30) -> dict[str, Any]:
    """A `slow` call's params as the session stamps them (2026-07-28 requests carry their envelope in `_meta`)."""
    data: dict[str, Any] = {"method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": seconds}}}
    session._stamp(data, {})
    return data["params"]  # type: ignore[no-any-return]


CALLS = [
    (EVERYTHING_STDIO, "echo", {"message": "hi"}),
    (EVERYTHING_STDIO, "get-structured-content", {"location": "New York"}),
    (EVERYTHING_STDIO, "get-sum", {"a": 2**70, "b": 1.5}),  # a number beyond 64 bits written and read as the SDK does
    (DYNAMIC, "speak", {}),  # 2026-07-28: a result without a resultType tag
]


@pytest.mark.parametrize(("server", "name", "arguments"), CALLS, ids=lambda v: v if isinstance(v, str) else None)
async def test_a_first_round_call_goes_to_the_pipe_not_the_dispatcher_and_answers_as_the_dispatcher_path(
    server: StdioServerParameters, name: str, arguments: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connected(server) as (session, _transport, wire):
        dispatched = Dispatched(session)
        with anyio.fail_after(10):
            lean_result = await lean.call_tool(session, name, arguments)
            assert "tools/call" not in dispatched.methods
            assert [line["id"] for line in wire.lines if line.get("method") == "tools/call"] == ["lean-1"]
            monkeypatch.setattr(lanes, "lane", lambda session: None)
            sdk_result = await lean.call_tool(session, name, arguments)
    assert "tools/call" in dispatched.methods
    assert lean_result == sdk_result


async def test_progress_of_a_lean_call_reaches_its_callback_under_the_lean_id() -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connected(EVERYTHING_STDIO) as (session, _transport, wire):
        dispatched = Dispatched(session)
        with anyio.fail_after(10):
            result = await lean.call_tool(
                session, "trigger-long-running-operation", {"duration": 0.2, "steps": 2}, progress_callback=on_progress
            )
    assert isinstance(result, types.CallToolResult) and "completed" in str(result.content)
    assert seen == [(1.0, 2.0), (2.0, 2.0)]
    (request,) = [line for line in wire.lines if line.get("method") == "tools/call"]
    assert request["params"]["_meta"]["progressToken"] == request["id"] == "lean-1"
    assert "tools/call" not in dispatched.methods


@pytest.mark.parametrize("server", [EVERYTHING_STDIO, DYNAMIC], ids=["2025-11-25", "2026-07-28"])
async def test_an_error_answer_raises_the_error_the_dispatcher_raises(server: StdioServerParameters) -> None:
    async with connected(server) as (session, transport, _wire):
        with anyio.fail_after(10):
            with pytest.raises(MCPError) as lean_error:
                await transport.request("no/such-method", {}, {}, timeout=None, on_progress=None)
            with pytest.raises(MCPError) as sdk_error:
                await session._dispatcher.send_raw_request("no/such-method", {})
    assert lean_error.value.error == sdk_error.value.error
    assert lean_error.value.error.code in (types.METHOD_NOT_FOUND, types.INVALID_PARAMS)


async def test_a_lean_call_past_the_read_timeout_is_cancelled_upstream_and_raises_the_sdk_timeout() -> None:
    async with connected(DYNAMIC) as (session, transport, wire):
        params = slow(session)
        with anyio.fail_after(10):
            with pytest.raises(MCPError) as lean_error:
                await transport.request("tools/call", params, {}, timeout=0.2, on_progress=None)
            with pytest.raises(MCPError) as sdk_error:
                await session._dispatcher.send_raw_request("tools/call", params, {"timeout": 0.2})
            assert (await lean.call_tool(session, "count", {})).structured_content == {"result": 2}  # still serving
    assert lean_error.value.error == sdk_error.value.error
    assert lean_error.value.error.code == types.REQUEST_TIMEOUT
    cancelled = [line["params"] for line in wire.lines if line.get("method") == "notifications/cancelled"]
    lean_cancel, sdk_cancel = cancelled  # one for each path's call, each naming its own request
    assert lean_cancel == {"requestId": "lean-1", "reason": "timed out after 0.2s"}
    assert sdk_cancel["reason"] == lean_cancel["reason"]


async def test_a_cancelled_caller_still_sends_the_courtesy_cancel() -> None:
    async with connected(DYNAMIC) as (session, transport, wire):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await transport.request("tools/call", slow(session), {}, timeout=None, on_progress=None)

                tg.start_soon(call)
                await wire.event("tools/call").wait()
                tg.cancel_scope.cancel()
        assert not transport._pending
    cancelled = [line["params"] for line in wire.lines if line.get("method") == "notifications/cancelled"]
    assert cancelled == [{"requestId": "lean-1", "reason": "caller cancelled"}]


async def test_a_server_that_dies_fails_every_lean_waiter_at_once_with_connection_closed() -> None:
    failures: list[int] = []
    async with connected(DYNAMIC) as (session, transport, wire):

        async def call() -> None:
            with pytest.raises(MCPError) as closed:
                await transport.request("tools/call", slow(session), {}, timeout=None, on_progress=None)
            failures.append(closed.value.error.code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                tg.start_soon(call)
                while len(transport._pending) < 2:
                    await wire.event("tools/call").wait()
                    wire.sent.pop("tools/call")
                (child,) = children_running("dynamic.py")
                child.kill()
        with pytest.raises(MCPError) as after:
            await transport.request("tools/call", slow(session), {}, timeout=None, on_progress=None)
    assert failures == [types.CONNECTION_CLOSED] * 2
    assert after.value.error.code == types.CONNECTION_CLOSED


async def test_a_stdio_upstream_killed_mid_call_is_closed_for_the_hub_and_its_restart_is_lean_again(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        connection = gw.gateway.upstreams["dynamic"].main
        async with gw.client(token) as client:
            before = await client.call_tool("dynamic__meta", {})
            assert before.structured_content is not None
            assert before.structured_content["progress_token"] == "lean-1"  # the upstream saw a lean id
            transport = lanes.lane(await connection.session(5))
            assert transport is not None
            wire = Wire(transport)
            (victim,) = children_running("dynamic.py")
            result = None

            async def call() -> None:
                nonlocal result
                result = await client.call_tool("dynamic__slow", {"seconds": 30})

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await wire.event("tools/call").wait()
                    victim.kill()
            assert result is not None and result.is_error
            assert "closed the connection" in gw.audit("tool.result")[-1]["error"]
            after = await client.call_tool("dynamic__meta", {})  # waits for the restarted server
        assert after.structured_content is not None and after.structured_content["progress_token"] == "lean-1"
        assert lanes.lane(await connection.session(5)) is not transport and connection.restarts == 1


async def test_with_a_global_tracer_provider_the_call_goes_through_the_dispatcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with connected(EVERYTHING_STDIO) as (session, _transport, wire):
        dispatched = Dispatched(session)
        monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)  # the SDK's span would record
        with anyio.fail_after(10):
            result = await lean.call_tool(session, "echo", {"message": "traced"})
    assert isinstance(result, types.CallToolResult) and result.content[0].text == "Echo: traced"  # type: ignore[union-attr]
    assert "tools/call" in dispatched.methods
    assert not [line for line in wire.lines if str(line.get("id", "")).startswith("lean-")]
