"""An HTTP upstream's lean tools/call (gateway/upstream/http_transport.py) makes of every kind of reply what the SDK
transport makes of it: each scenario below is called once on the lean path and once on the SDK path (the dispatcher
and the SDK transport) of the same session, against a server that answers the way the scenario's tool says, and the
two outcomes (the result, or the error's code and message) must be equal; the lean one must have been sent lean
(its id is `lean-N`), except where the lean path declines and the SDK path sends it."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.upstream import lanes, lean
from gateway.upstream.http_client import mcp_http_client
from gateway.upstream.http_transport import HttpTransport
from tests.login.support import self_signed
from tests.support.serving import serving

pytestmark = pytest.mark.anyio

SESSION = "s-1"
TOOLS = [
    "echo",
    "json",
    "noted",
    "accepted",
    "gone",
    "rpc-error",
    "broken",
    "odd",
    "garbled",
    "cut",
    "resumed",
    "huge",
    "error-answer",
]


def event(message: dict[str, Any], event_id: str | None = None, retry: int | None = None) -> str:
    head = (f"id: {event_id}\n" if event_id else "") + (f"retry: {retry}\n" if retry is not None else "")
    return f"{head}event: message\ndata: {json.dumps(message)}\n\n"


def answer(request_id: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}}


def sse(*chunks: str) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="text/event-stream")


class Upstream:
    """A handshake-era MCP server whose tools/call reply is its tool's scenario; it records the ids it is sent."""

    def __init__(self) -> None:
        self.ids: list[Any] = []
        self.cookies: list[str | None] = []
        self.resumable: dict[str, dict[str, Any]] = {}
        self.release = anyio.Event()  # "held" answers once it is set

    async def post(self, request: Request) -> Response:
        message = await request.json()
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}, "logging": {}},
                "serverInfo": {"name": "scenarios", "version": "1"},
            }
            return JSONResponse(
                {"jsonrpc": "2.0", "id": request_id, "result": result}, headers={"mcp-session-id": SESSION}
            )
        if request_id is None:
            return Response(status_code=202)
        if method == "tools/list":
            tools = [{"name": name, "inputSchema": {"type": "object"}} for name in [*TOOLS, "cookie", "moved", "held"]]
            return JSONResponse({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})
        assert method == "tools/call" and request.headers.get("mcp-session-id") == SESSION
        self.ids.append(request_id)
        self.cookies.append(request.headers.get("cookie"))
        return self.reply(message["params"]["name"], request_id, request)

    def reply(self, name: str, request_id: Any, request: Request) -> Response:
        log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "working"}}
        match name:
            case "echo":
                return sse(event(answer(request_id, "echoed")))
            case "json":
                return JSONResponse(answer(request_id, "as json"))
            case "noted":
                return sse(event(log), event(answer(request_id, "after a log")))
            case "accepted":
                return Response(status_code=202)
            case "gone":
                return Response(status_code=404)
            case "rpc-error":
                error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32602, "message": "bad params"}}
                return JSONResponse(error, status_code=400)
            case "broken":
                return PlainTextResponse("oops", status_code=500)
            case "odd":
                return PlainTextResponse("hello")
            case "garbled":
                return sse("event: message\ndata: {not json\n\n")
            case "cut":
                return sse(event(log))
            case "resumed":
                self.resumable["e-1"] = answer(request_id, "resumed")
                return sse(event(log, "e-1", retry=10))
            case "huge":
                return sse(event(answer(request_id, "x" * (1024 * 1024 + 10))))
            case "error-answer":
                return sse(event({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32001, "message": "nope"}}))
            case "cookie":
                response = sse(event(answer(request_id, "with a cookie")))
                response.set_cookie("sticky", "node-1")
                return response
            case "held":
                return StreamingResponse(self.held(request_id, log), media_type="text/event-stream")
            case "moved" if request.url.path == "/mcp":
                return RedirectResponse("/mcp/", status_code=307)
            case "moved":
                return sse(event(answer(request_id, "moved")))
        raise AssertionError(name)

    async def held(self, request_id: Any, log: dict[str, Any]) -> AsyncIterator[str]:
        yield event(log)
        await self.release.wait()
        yield event(answer(request_id, "held"))

    async def get(self, request: Request) -> Response:
        resumed = self.resumable.pop(request.headers.get("last-event-id", ""), None)
        if resumed is None:
            return Response(status_code=405)
        return sse(event(resumed, "e-2"))


def app(upstream: Upstream) -> Starlette:
    routes = [Route(path, upstream.post, methods=["POST"]) for path in ("/mcp", "/mcp/")] + [
        Route("/mcp", upstream.get, methods=["GET"]),
        Route("/mcp", lambda r: Response(), methods=["DELETE"]),
    ]
    return Starlette(routes=routes)


@contextlib.asynccontextmanager
async def connected(tls: tuple[Path, Path] | None = None) -> AsyncIterator[tuple[ClientSession, Upstream]]:
    upstream = Upstream()
    async with serving(app(upstream), tls) as base:
        transport = HttpTransport(f"{base}/mcp", mcp_http_client())
        async with Client(transport.open(), mode="legacy", cache=None) as client:
            lanes.bind(client.session, transport)
            yield client.session, upstream


async def outcome(session: ClientSession, name: str) -> Any:
    with anyio.fail_after(10):
        try:
            result = await lean.call_tool(session, name, {})
        except MCPError as exc:
            return exc.error.code, exc.error.message
    return result.model_dump()


@pytest.mark.parametrize("name", TOOLS)
async def test_a_lean_call_ends_as_the_sdk_path_ends_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with connected() as (session, upstream):
        ours = await outcome(session, name)
        with monkeypatch.context() as patched:
            patched.setattr(lanes, "lane", lambda session: None)
            theirs = await outcome(session, name)
    assert ours == theirs
    assert isinstance(upstream.ids[0], str) and upstream.ids[0].startswith("lean-")
    assert isinstance(upstream.ids[1], int)  # the dispatcher's


async def test_the_answers_that_end_a_stream_are_the_calls_own() -> None:
    async with connected() as (session, _):
        assert await outcome(session, "echo") == await outcome(session, "echo")
        assert (await outcome(session, "noted"))["content"][0]["text"] == "after a log"
        assert (await outcome(session, "resumed"))["content"][0]["text"] == "resumed"
        assert await outcome(session, "cut") == (-32000, "SSE stream ended without a response")


async def test_a_lean_answer_that_arrives_after_its_connection_closed_is_still_the_calls() -> None:
    """The call's log went to the session, then the connection closed (its upstream restarting, the gateway
    stopping) before the answer came: the call gets its answer, as when the session's stream is closed under it.
    It once failed an assertion there, which the gateway answered as an internal error."""
    upstream, logged, got = Upstream(), anyio.Event(), []

    async def on_log(params: Any) -> None:
        logged.set()

    async with serving(app(upstream)) as base, anyio.create_task_group() as tg:
        transport = HttpTransport(f"{base}/mcp", mcp_http_client())
        try:
            async with Client(transport.open(), mode="legacy", cache=None, logging_callback=on_log) as client:
                lanes.bind(client.session, transport)
                await client.session.list_tools()  # the result's check needs no session later

                async def call() -> None:
                    got.append(await outcome(client.session, "held"))

                tg.start_soon(call)
                with anyio.fail_after(10):
                    await logged.wait()
        finally:
            upstream.release.set()  # the answer, once the connection has closed (or the test failed)
    assert [result["content"][0]["text"] for result in got] == ["held"]
    assert upstream.ids[0].startswith("lean-")


async def test_a_redirecting_endpoint_is_left_to_the_sdk_path_which_follows_it() -> None:
    async with connected() as (session, upstream):
        first = await outcome(session, "moved")
        assert await outcome(session, "echo") == await outcome(session, "echo")
    assert first["content"][0]["text"] == "moved"
    assert upstream.ids[0].startswith("lean-") and all(isinstance(i, int) for i in upstream.ids[1:])


async def test_a_cookie_set_on_the_lean_path_is_kept_and_sent_by_the_sdk_path() -> None:
    async with connected() as (session, upstream):
        await outcome(session, "cookie")
        await outcome(session, "echo")
    assert upstream.ids[0].startswith("lean-") and isinstance(upstream.ids[1], int)
    assert upstream.cookies == [None, "sticky=node-1"]


async def test_an_https_endpoint_is_called_lean_with_the_sdk_clients_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what httpx2's default context trusts, and so the lean path's
    async with connected((cert, key)) as (session, upstream):
        ours = await outcome(session, "noted")
        with monkeypatch.context() as patched:
            patched.setattr(lanes, "lane", lambda session: None)
            theirs = await outcome(session, "noted")
    assert ours == theirs and ours["content"][0]["text"] == "after a log"
    assert upstream.ids[0].startswith("lean-") and isinstance(upstream.ids[1], int)


async def test_an_https_endpoint_whose_certificate_is_not_trusted_is_never_sent_a_lean_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with connected((cert, key)) as (session, upstream):
        transport = lanes.lane(session)
        assert isinstance(transport, HttpTransport)
        monkeypatch.delenv("SSL_CERT_FILE")
        transport._pool._ssl = ssl.create_default_context()  # type: ignore[union-attr]  # the system's CAs only
        assert await outcome(session, "echo") == (CONNECTION_CLOSED, "Connection closed")
    assert upstream.ids == []
