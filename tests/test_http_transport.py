"""A streamable-HTTP upstream's transport (gateway/upstream/http_transport.py): calls reuse their connection,
on the lean path and on the SDK transport's (whose SSE answers are read to their end), and the gateway answers
and audits exactly as over the SDK's own transport, with real server-everything over HTTP (the handshake era,
every answer on SSE). A 2026-07-28 server that
answers in JSON (the SDK's) had its connections reused already: the SDK reads a JSON answer to its end."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import JSONRPCRequest, JSONRPCResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.upstream import connection, http_transport
from gateway.upstream.http_client import mcp_http_client
from tests.support.harness import EVERYTHING, PRELOAD, everything_http, free_port, http_manifest, running_gateway
from tests.support.processes import serving as running
from tests.support.serving import serving

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "qa@example.com", "grant": {"tools": ["remote.*", "slow.*"]}}}


@contextlib.contextmanager
def connects_to(port: int) -> Iterator[list[int]]:
    """Each new TCP connection this process opens to `port`, as it opens it (the lean path's and httpcore's)."""
    opened: list[int] = []
    connect = anyio.connect_tcp

    async def counted(*args: Any, **kwargs: Any) -> Any:
        if (args[1] if len(args) > 1 else kwargs.get("remote_port")) == port:
            opened.append(port)
        return await connect(*args, **kwargs)

    anyio.connect_tcp = counted  # type: ignore[assignment]
    try:
        yield opened
    finally:
        anyio.connect_tcp = connect


@pytest.mark.parametrize("path", ["lean", "sdk"])
async def test_calls_to_a_handshake_era_http_upstream_reuse_its_connection(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "sdk":  # the SDK transport under the lean path, which takes the calls the lean path declines
        monkeypatch.setattr(http_transport.HttpTransport, "request", SdkTransport.request)
    async with everything_http() as url:  # every answer on SSE
        port = httpx2.URL(url).port
        assert port is not None
        async with running_gateway(tmp_path, manifests=[http_manifest("remote", url)], agents=AGENTS) as gw:
            async with gw.client(await gw.open_session("bot")) as client:
                await client.call_tool("remote__echo", {"message": "first"})
                with connects_to(port) as opened:
                    for _ in range(10):
                        result = await client.call_tool("remote__echo", {"message": "again"})
                        assert not result.is_error
    assert len(opened) <= 2  # a second one when a call comes before the last one's stream has ended


class SdkTransport:
    """The SDK's own transport in place of `HttpTransport`, with no lean path."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._url, self._http = url, http

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Any]:
        async with self._http, streamable_http_client(self._url, http_client=self._http) as streams:
            yield streams

    async def request(self, *args: Any, **kwargs: Any) -> None:
        return None


async def calls_and_records(tmp_path: Path, url: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """A few calls of every kind through the gateway, and the audit records they left, without what differs
    from one gateway to another (times, ids, hashes, keyed fingerprints)."""
    manifests = [http_manifest("remote", url), http_manifest("slow", url, timeout="1s")]
    answers: list[Any] = []
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            progress: list[tuple[float, float | None]] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append((done, total))

            for name, arguments in [
                ("remote__echo", {"message": "same"}),
                ("remote__get-sum", {"a": 2, "b": 3}),
                ("remote__get-sum", {"a": "two", "b": 3}),  # the upstream's own error
                ("remote__trigger-long-running-operation", {"duration": 0.2, "steps": 2}),
                ("slow__trigger-long-running-operation", {"duration": 5, "steps": 1}),  # times out
            ]:
                result = await client.call_tool(name, arguments, progress_callback=on_progress)
                answers.append((name, result.is_error, [c.model_dump() for c in result.content]))
            answers.append(progress)
        varying = {"ts", "hash", "prev_hash", "session", "call_id", "latency_ms", "arguments", "result", "grant"}
        records = [
            {k: v for k, v in r.items() if k not in varying} for r in gw.audit() if r["event"].startswith("tool")
        ]
    return answers, records


async def test_answers_and_audit_records_are_the_sdk_transports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with everything_http() as url:
        ours = await calls_and_records(tmp_path / "ours", url)
        monkeypatch.setattr(connection, "HttpTransport", SdkTransport)
        theirs = await calls_and_records(tmp_path / "sdk", url)
    assert ours == theirs
    (*_, timed_out, progress) = ours[0]
    assert timed_out[1] and progress == [(1, 2), (2, 2)]
    assert [r["outcome"] for r in ours[1] if r["event"] == "tool.result"] == ["ok", "ok", "tool_error", "ok", "timeout"]


async def gone_and_back(tmp_path: Path) -> list[Any]:
    """What a call sees when server-everything is killed under it, and what the next calls see once it is back
    on the same port (its sessions gone)."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "HOME": os.environ.get("HOME", "/tmp")}
    argv = ["node", "-r", str(PRELOAD), str(EVERYTHING), "streamableHttp"]
    seen: list[Any] = []
    first = running(argv, b"listening on port", env=env)
    victim = await first.__aenter__()
    manifests = [http_manifest("remote", f"http://127.0.0.1:{port}/mcp")]
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            running_upstream = anyio.Event()

            async def progressed(done: float, total: float | None, message: str | None) -> None:
                running_upstream.set()

            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    operation = {"duration": 30, "steps": 300}
                    name = "remote__trigger-long-running-operation"
                    result = await client.call_tool(name, operation, progress_callback=progressed)
                    seen.append((result.is_error, result.content[0].model_dump()))

                tg.start_soon(call)
                with anyio.fail_after(10):  # until its answer stream is open and carrying progress
                    await running_upstream.wait()
                victim.kill()
            with contextlib.suppress(ProcessLookupError):  # it is gone already
                await first.__aexit__(None, None, None)
            async with running(argv, b"listening on port", env=env):
                for _ in range(2):
                    try:
                        again = await client.call_tool("remote__echo", {"message": "back"})
                        seen.append((again.is_error, again.content[0].model_dump()))
                    except MCPError as exc:
                        seen.append((exc.error.code, exc.error.message))
        seen.append([(r["outcome"], r.get("error")) for r in gw.audit("tool.result")])
        seen.append(gw.gateway.upstreams["remote"].main.restarts)
    return seen


async def test_an_upstream_gone_mid_call_and_back_is_seen_as_through_the_sdk_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = await gone_and_back(tmp_path / "ours")
    monkeypatch.setattr(connection, "HttpTransport", SdkTransport)
    theirs = await gone_and_back(tmp_path / "sdk")
    assert ours[:-1] == theirs[:-1]  # the restart count depends on how long the server took to come back
    unavailable = "The tool server 'remote' is unavailable; the call was not completed."
    assert ours[0] == (True, {"type": "text", "text": unavailable, "annotations": None, "meta": None})
    # The lost connection was reconnected: the restarted server's new session answers (it once stayed on the
    # session the restarted server no longer knew, and every later call failed).
    back = (False, {"type": "text", "text": "Echo: back", "annotations": None, "meta": None})
    assert ours[1] == ours[2] == back
    assert ours[3] == [
        ("error", "upstream server 'remote' closed the connection (it will be restarted)"),
        ("ok", None),
        ("ok", None),
    ]
    assert ours[-1] >= 1 and theirs[-1] >= 1


# ------------------------------------------------------------------ the rest of an answered stream


class HeldOpen:
    """Answers each POST on SSE: the response, then a notification, then ends it or (`hold`) keeps it open
    until the client goes away."""

    def __init__(self) -> None:
        self.hold = False
        self.gone = anyio.Event()

    async def post(self, request: Request) -> StreamingResponse:
        message = await request.json()
        response = JSONRPCResponse(jsonrpc="2.0", id=message["id"], result={"echo": message["params"]})
        note = types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams(level="info", data="late")
        )

        async def events() -> AsyncIterator[str]:
            yield f"event: message\ndata: {response.model_dump_json(by_alias=True)}\n\n"
            yield f"event: message\ndata: {note.model_dump_json(by_alias=True)}\n\n"
            if self.hold:
                try:
                    await anyio.sleep_forever()
                finally:
                    self.gone.set()

        return StreamingResponse(events(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def held_open() -> AsyncIterator[tuple[HeldOpen, Any, Any]]:
    server = HeldOpen()
    app = Starlette(routes=[Route("/mcp", server.post, methods=["POST"])])
    async with serving(app) as base:
        async with http_transport.HttpTransport(f"{base}/mcp", mcp_http_client()).open() as (read, write):
            yield server, read, write


def request(n: int) -> SessionMessage:
    return SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=n, method="tools/call", params={"n": n}))


async def test_what_follows_the_response_on_its_stream_is_dropped_as_the_sdk_drops_it() -> None:
    async with held_open() as (_, read, write):
        with anyio.fail_after(5):
            for n in (1, 2):
                await write.send(request(n))
                answer = await read.receive()
                assert isinstance(answer.message, JSONRPCResponse) and answer.message.id == n


async def test_a_stream_kept_open_after_its_response_is_closed_after_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_transport, "END_SECONDS", 0.05)
    async with held_open() as (server, read, write):
        server.hold = True
        with anyio.fail_after(5):
            await write.send(request(1))
            answer = await read.receive()
            assert isinstance(answer.message, JSONRPCResponse) and answer.message.result == {"echo": {"n": 1}}
            await server.gone.wait()
