"""A plain tools/call goes out on the session's own dispatcher (an in-memory or HTTP connection; a stdio one
writes it to its pipe, tests/test_stdio_transport.py), not through `ClientSession.call_tool`,
and keeps what the SDK's request machinery gave it: the session's stamp, id correlation, progress
routing, `notifications/cancelled` on abandonment, and the same typed result. (`ClientSession.call_tool`
refuses to run in every test here.) The connection's read stream is watched in place, without a pump."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

from gateway.upstream import lean
from gateway.upstream.connection import _Watched
from tests.support.harness import everything_stdio_manifest, running_gateway
from tests.test_fastlane import envelope, post

pytestmark = pytest.mark.anyio


class FakeServer:
    """Answers `echo` (with one progress notification first when asked for it), never answers `hang`."""

    def __init__(self) -> None:
        self.seen: list[JSONRPCRequest | JSONRPCNotification] = []
        self.cancelled = anyio.Event()

    async def serve(self, receive: Any, send: Any) -> None:
        async for item in receive:
            message = item.message
            self.seen.append(message)
            if isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
                self.cancelled.set()
            if not isinstance(message, JSONRPCRequest) or message.params["name"] != "echo":
                continue
            token = (message.params.get("_meta") or {}).get("progressToken")
            if token is not None:
                progress = {"progressToken": token, "progress": 1, "total": 2}
                await send.send(
                    SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params=progress))
                )
            text = message.params["arguments"]["message"]
            result = {"content": [{"type": "text", "text": text}], "structuredContent": None}
            await send.send(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)))


@pytest.fixture(autouse=True)
def no_session_call_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ClientSession.call_tool was used")

    monkeypatch.setattr(ClientSession, "call_tool", refused)
    monkeypatch.setattr(ClientSession, "validate_tool_result", lambda self, name, result: anyio.sleep(0))


@contextlib.asynccontextmanager
async def wired() -> AsyncIterator[tuple[ClientSession, FakeServer]]:
    to_server, server_in = anyio.create_memory_object_stream[Any](16)
    server_out, to_client = anyio.create_memory_object_stream[Any](16)
    server = FakeServer()
    async with to_server, server_in, server_out, to_client, anyio.create_task_group() as tg:
        tg.start_soon(server.serve, server_in, server_out)
        async with ClientSession(to_client, to_server) as session:
            yield session, server
        tg.cancel_scope.cancel()


async def test_a_plain_call_is_stamped_by_the_session_and_answered_as_a_typed_result() -> None:
    async with wired() as (session, server):
        await plain_call(session, server)


async def plain_call(session: ClientSession, server: FakeServer) -> None:
    stamped: list[dict[str, Any]] = []
    stamp = session._stamp

    def recording(data: dict[str, Any], opts: Any) -> None:
        stamp(data, opts)
        stamped.append(data)

    session._stamp = recording
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    with anyio.fail_after(5):
        result = await lean.call_tool(
            session, "echo", {"message": "hi"}, meta={"x-test/k": "v"}, progress_callback=on_progress
        )
    assert isinstance(result, types.CallToolResult)
    assert result.content == [types.TextContent(type="text", text="hi")]
    assert [d["method"] for d in stamped] == ["tools/call"]
    (request,) = server.seen
    assert isinstance(request, JSONRPCRequest)
    assert request.params["name"] == "echo" and request.params["arguments"] == {"message": "hi"}
    assert request.params["_meta"]["x-test/k"] == "v"
    assert progress == [(1, 2)]


async def test_an_abandoned_call_is_cancelled_upstream() -> None:
    async with wired() as (session, server):
        await abandoned_call(session, server)


async def abandoned_call(session: ClientSession, server: FakeServer) -> None:
    with anyio.move_on_after(0.2):
        await lean.call_tool(session, "hang", {})
    with anyio.fail_after(5):
        await server.cancelled.wait()
    request, cancelled = server.seen
    assert isinstance(request, JSONRPCRequest) and isinstance(cancelled, JSONRPCNotification)
    assert cancelled.params is not None and cancelled.params["requestId"] == request.id


async def test_the_gateway_forwards_a_plain_call_lean(tmp_path: Path) -> None:
    agents = {"lean-bot": {"owner": "ops@example.com", "grant": {"tools": ["everything.echo"]}}}
    async with running_gateway(tmp_path, manifests=[everything_stdio_manifest()], agents=agents) as gw:
        token = await gw.open_session("lean-bot")
        async with gw.http() as http:
            response = await post(http, token, envelope(1, "echo", {"message": "lean"}))
    assert response.status_code == 200
    assert response.json()["result"]["content"] == [{"type": "text", "text": "Echo: lean"}]
    assert gw.audit("tool.result")[-1]["outcome"] == "ok"


async def test_a_watched_read_stream_fills_absent_result_tags_and_fires_closed_when_the_server_side_ends() -> None:
    send, receive = anyio.create_memory_object_stream[Any](4)
    closed = anyio.Event()
    watched = _Watched(receive, closed, lambda: True)
    await send.send(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=1, result={"content": []})))
    await send.aclose()
    async with watched:
        items = [item async for item in watched]
        assert closed.is_set()
    assert [item.message.result for item in items] == [{"content": [], "resultType": "complete"}]
