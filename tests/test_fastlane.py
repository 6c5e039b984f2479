"""The tools/call fast lane answers and records exactly as the SDK path does, in both protocol eras.

The SDK path is driven honestly, by the lane's own rule: a request whose `_meta` carries a key the lane does
not know is left to the SDK, which ignores the key. So each call is made twice with the same meaning, once
taken by the lane and once by the SDK, on two sessions of the same agent, and the answers and the audit
records must not differ beyond what differs between any two calls (ids, times, hashes, the session, and in
the handshake era the MCP session). A handshake-era answer the SDK gives on an SSE stream is compared by the
one message that stream carries.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from tests.support.harness import Harness, everything_stdio_manifest, running_gateway
from tests.test_outcomes import Written

pytestmark = pytest.mark.anyio

PATH = "/servers/everything/mcp"
AGENTS = {
    "lane-bot": {
        "owner": "ops@example.com",
        "grant": {
            "tools": ["everything.echo", "everything.get-resource-links", "everything.get-structured-content"],
            "arguments": {"everything.echo": {"message": {"pattern": "[a-z]+", "max_length": 8}}},
            "budget": {"session_calls": 2},
        },
    },
    "long-bot": {"owner": "ops@example.com", "grant": {"tools": ["everything.*"]}},
}
SDK_ONLY = {"x-test/path": "sdk"}  # a `_meta` key the lane does not know: the SDK path serves the call
VARYING = {"call_id", "ts", "seq", "hash", "prev_hash", "latency_ms", "session", "expires_at", "jti"}


def envelope(request_id: int, name: Any, arguments: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "lane-test", "version": "1.0"},
        **(extra or {}),
    }
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }


async def post(http: httpx.AsyncClient, token: str, body: dict[str, Any], path: str = PATH) -> httpx.Response:
    name = body["params"]["name"]
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        **({"mcp-name": name} if isinstance(name, str) else {}),
    }
    return await http.post(path, json=body, headers=headers)


def answer(response: httpx.Response, sid: str) -> tuple[int, Any]:
    return response.status_code, httpx.Response(200, content=response.text.replace(sid, "SID").encode()).json()


def records(gw: Harness, sid: str) -> list[dict[str, Any]]:
    return [
        {k: (v.replace(sid, "SID") if isinstance(v, str) else v) for k, v in record.items() if k not in VARYING}
        for record in gw.audit()
        if record.get("session") == sid
    ]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    extra = {"audit": {"path": "./state/audit.jsonl", "fsync": "always", "denials_per_minute": 100_000}}
    async with running_gateway(tmp_path, manifests=[everything_stdio_manifest()], agents=AGENTS, extra=extra) as gw:
        yield gw


@pytest.fixture
def sdk_reached(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests the SDK's session managers handled."""
    reached: list[str] = []
    handle = StreamableHTTPSessionManager.handle_request

    async def counted(self: StreamableHTTPSessionManager, scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await handle(self, scope, receive, send)

    monkeypatch.setattr(StreamableHTTPSessionManager, "handle_request", counted)
    yield reached


CALLS = {
    "granted": lambda text: ("echo", {"message": text}),
    "links": lambda text: ("get-resource-links", {"count": len(text)}),  # renamed on the aggregate view
    "structured": lambda text: ("get-structured-content", {"location": "Chicago"}),
    "tool_error": lambda text: ("get-resource-links", {"count": 0}),  # the upstream refuses it: isError
    "constraint": lambda text: ("echo", {"message": text + "1"}),  # the pattern allows letters only
    "missing": lambda text: ("echo", {}),  # a constrained argument that is missing is refused too
    "not_granted": lambda text: ("get-sum", {"a": 1, "b": 2}),
    "unknown": lambda text: (f"no-such-{text}", None),
    "bad_arguments": lambda text: ("echo", text),  # not an object: the SDK's INVALID_PARAMS either way
}
TAKEN = set(CALLS) - {"bad_arguments"}  # all but malformed requests


# Random sequences of calls, and two that are always tried: a session stopped after two calls, and every kind.
CALL_SEQUENCES = given(
    calls=st.lists(st.tuples(st.sampled_from(sorted(CALLS)), st.text("abcxyz", min_size=1, max_size=8)), max_size=6)
)
STOPPED_AFTER_TWO = example(calls=[("granted", "a"), ("granted", "b"), ("granted", "c"), ("constraint", "d")])
EVERY_KIND = example(calls=[(kind, "x") for kind in sorted(CALLS)])

# On the aggregate view names are namespaced, and a result's resource links are renamed there.
VIEWS = pytest.mark.parametrize(("path", "prefix"), [(PATH, ""), ("/mcp", "everything__")])


@VIEWS
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@CALL_SEQUENCES
@STOPPED_AFTER_TWO
@EVERY_KIND
async def test_the_lane_and_the_sdk_path_answer_and_record_alike(
    gw: Harness, sdk_reached: list[str], path: str, prefix: str, calls: list[tuple[str, str]]
) -> None:
    lane_token, sdk_token = await gw.open_session("lane-bot"), await gw.open_session("lane-bot")
    lane_sid, sdk_sid = (gw.gateway.tokens.verify(t).sid for t in (lane_token, sdk_token))
    async with gw.http() as http:
        for n, (kind, text) in enumerate(calls):
            name, arguments = CALLS[kind](text)
            name = prefix + name
            reached = len(sdk_reached)
            by_lane = await post(http, lane_token, envelope(n, name, arguments), path)
            assert len(sdk_reached) == reached + (kind not in TAKEN)  # the lane answered it, or left it to the SDK
            by_sdk = await post(http, sdk_token, envelope(n, name, arguments, SDK_ONLY), path)
            assert len(sdk_reached) == reached + (kind not in TAKEN) + 1
            assert answer(by_lane, lane_sid) == answer(by_sdk, sdk_sid)
    assert records(gw, lane_sid) == records(gw, sdk_sid)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        pytest.param({"capabilities": {"sampling": {}}}, 200, id="the client can be asked for input"),
        pytest.param({"params": {"requestState": "opaque"}}, 400, id="a resumed call (not one of ours)"),
        pytest.param({"headers": {"mcp-name": "other"}}, 400, id="a routing header that disagrees"),
        pytest.param({"headers": {"content-type": "text/plain"}}, 400, id="not JSON"),
        pytest.param({"body": {"extra": 1}}, 200, id="an envelope member the lane does not know"),
    ],
)
async def test_what_the_lane_does_not_know_it_leaves_to_the_sdk(
    gw: Harness, sdk_reached: list[str], change: dict[str, Any], status: int
) -> None:
    token = await gw.open_session("lane-bot")
    body = envelope(1, "echo", {"message": "hi"})
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = change.get("capabilities", {})
    body["params"].update(change.get("params", {}))
    body.update(change.get("body", {}))
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
        **change.get("headers", {}),
    }
    async with gw.http() as http:
        response = await http.post(PATH, content=json.dumps(body), headers=headers)
    assert sdk_reached == [PATH]
    assert response.status_code == status


# ------------------------------------------------------------------ the handshake era (2025-11-25)

HANDSHAKE = "2025-11-25"


class McpSession:
    """A handshake-era MCP session spoken over plain HTTP: initialized, and served once by the SDK path (a
    tools/list), as a client's session is before the lane can take its calls."""

    def __init__(self, http: httpx.AsyncClient, token: str, path: str = PATH) -> None:
        self.http, self.token, self.path = http, token, path
        self.id = ""

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.token}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": HANDSHAKE,
            **({"mcp-session-id": self.id} if self.id else {}),
            **extra,
        }

    async def open(self, capabilities: dict[str, Any] | None = None) -> McpSession:
        init = {
            "jsonrpc": "2.0",
            "id": "init",
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE,
                "capabilities": capabilities or {},
                "clientInfo": {"name": "lane-test", "version": "1.0"},
            },
        }
        opened = await self.http.post(self.path, json=init, headers=self.headers())
        assert opened.status_code == 200, opened.text
        self.id = opened.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.path, json=initialized, headers=self.headers())).status_code == 202
        listed = await self.post({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        assert listed.status_code == 200 and "result" in message_of(listed)
        return self

    async def post(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self.http.post(self.path, content=json.dumps(body), headers=self.headers(**headers))

    async def call(
        self, request_id: int | str, name: Any, arguments: Any, meta: dict[str, Any] | None = None, **headers: str
    ) -> httpx.Response:
        params = {"name": name, "arguments": arguments, **({"_meta": meta} if meta is not None else {})}
        return await self.post(
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}, **headers
        )


def message_of(response: httpx.Response) -> Any:
    """The JSON-RPC message of an answer: its JSON body, or the one message its SSE stream carried."""
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    [message] = stream_of(response)
    return message


def stream_of(response: httpx.Response) -> list[Any]:
    """The messages of an SSE answer, in order."""
    return [
        json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()
    ]


def by_lane(response: httpx.Response) -> bool:
    return response.headers["content-type"] == "application/json"


def handshake_records(gw: Harness, sid: str, mcp_session: str) -> list[dict[str, Any]]:
    kept = records(gw, sid)
    for record in kept:
        assert record.get("mcp_session") in (mcp_session, None) and record.get("protocol_version") in (HANDSHAKE, None)
        record.pop("mcp_session", None)
    return kept


def endpoint_of(gw: Harness, path: str = PATH) -> Any:
    return gw.server.config.app.state.edge.apps[path]


@VIEWS
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@CALL_SEQUENCES
@STOPPED_AFTER_TWO
@EVERY_KIND
async def test_in_the_handshake_era_the_lane_and_the_sdk_path_answer_and_record_alike(
    gw: Harness, sdk_reached: list[str], path: str, prefix: str, calls: list[tuple[str, str]]
) -> None:
    lane_token, sdk_token = await gw.open_session("lane-bot"), await gw.open_session("lane-bot")
    lane_sid, sdk_sid = (gw.gateway.tokens.verify(t).sid for t in (lane_token, sdk_token))
    async with gw.http() as http:
        lane, sdk = await McpSession(http, lane_token, path).open(), await McpSession(http, sdk_token, path).open()
        for n, (kind, text) in enumerate(calls):
            name, arguments = CALLS[kind](text)
            reached = len(sdk_reached)
            taken = await lane.call(n, prefix + name, arguments)
            assert len(sdk_reached) == reached + (kind not in TAKEN)
            assert by_lane(taken) == (kind in TAKEN)
            served = await sdk.call(n, prefix + name, arguments, SDK_ONLY)
            assert len(sdk_reached) == reached + (kind not in TAKEN) + 1 and not by_lane(served)
            assert taken.status_code == served.status_code == 200
            assert taken.headers["mcp-session-id"] == lane.id
            lane_answer = json.loads(json.dumps(message_of(taken)).replace(lane_sid, "SID"))
            assert lane_answer == json.loads(json.dumps(message_of(served)).replace(sdk_sid, "SID"))
            assert "resultType" not in lane_answer.get("result", {})  # the 2025-11-25 shape
    assert handshake_records(gw, lane_sid, lane.id) == handshake_records(gw, sdk_sid, sdk.id)


async def test_a_handshake_era_sdk_client_gets_its_results_through_the_lane(
    gw: Harness, sdk_reached: list[str]
) -> None:
    token = await gw.open_session("lane-bot")
    async with gw.client(token, url=gw.server_url("everything"), mode="legacy") as client:
        await client.list_tools()
        reached = len(sdk_reached)
        echoed = await client.call_tool("echo", {"message": "hi"})
        structured = await client.call_tool("get-structured-content", {"location": "Chicago"})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no-such-tool", {})
        stopped = await client.call_tool("echo", {"message": "hi"})  # the budget allows two calls
        assert len(sdk_reached) == reached  # every call took the lane
    assert echoed.content[0].text == "Echo: hi" and not echoed.is_error  # type: ignore[union-attr]
    assert structured.structured_content is not None and "temperature" in structured.structured_content
    assert unknown.value.code == -32602  # the handshake era's code for an unknown tool
    assert stopped.is_error and "STOP" in stopped.content[0].text  # type: ignore[union-attr]


async def test_the_handshake_lane_leaves_what_it_cannot_do_alike_to_the_sdk(
    tmp_path: Path, sdk_reached: list[str]
) -> None:
    manifests = [everything_stdio_manifest(), everything_stdio_manifest("own", isolation="per_session")]
    agents = {"bot": {"owner": "o@example.com", "grant": {"tools": ["everything.*", "own.*"]}}}
    async with running_gateway(tmp_path, manifests=manifests, agents=agents) as gw, gw.http() as http:
        token = await gw.open_session("bot")
        plain = await McpSession(http, token).open()
        assert by_lane(await plain.call(1, "echo", {"message": "a"}))
        asking = await McpSession(http, token).open({"sampling": {}})
        own = await McpSession(http, token, "/servers/own/mcp").open()
        cases = {
            "the client can be asked for input": (asking, 2, "echo", {}, {}),
            "a progress token": (plain, 3, "echo", {"progressToken": "p"}, {}),
            "a per-session upstream, whose logs ride the request's stream": (own, 4, "echo", None, {}),
            "a protocol header the session did not negotiate": (
                plain,
                5,
                "echo",
                None,
                {"mcp-protocol-version": "2025-06-18"},
            ),
            "an Accept without SSE (the SDK refuses it)": (plain, 6, "echo", None, {"accept": "application/json"}),
        }
        for case, (session, n, name, meta, headers) in cases.items():
            reached = len(sdk_reached)
            response = await session.call(n, name, {"message": "b"}, meta, **headers)
            assert len(sdk_reached) == reached + 1, case
            assert response.status_code == (406 if "Accept" in case else 200), case
        # A set log level changes nothing: an upstream's log lines ride the request's stream only from a per-session
        # upstream (the lane leaves those), never from a shared one.
        for session in (plain, own):
            level = {"level": "debug"}
            await session.post({"jsonrpc": "2.0", "id": 7, "method": "logging/setLevel", "params": level})
        relayed = await own.call(8, "toggle-simulated-logging", {}, SDK_ONLY)  # it logs at once, then every 5 s
        assert [m.get("method") for m in stream_of(relayed)] == ["notifications/message", None]
        dropped = await plain.call(8, "toggle-simulated-logging", {}, SDK_ONLY)
        assert [m.get("method") for m in stream_of(dropped)] == [None]
        assert by_lane(taken := await plain.call(9, "toggle-simulated-logging", {}))
        assert message_of(taken)["result"] != message_of(dropped)["result"]  # toggled off again, as the SDK would
        assert by_lane(await plain.call(10, "echo", {"message": "c"}))

        stranger = McpSession(http, token)
        stranger.id = "0" * 32
        assert (await stranger.call(11, "echo", {"message": "d"})).status_code == 404
        ended = await McpSession(http, token).open()
        assert (await http.delete(PATH, headers=ended.headers())).status_code == 200
        reached = len(sdk_reached)
        gone = await ended.call(12, "echo", {"message": "e"})
        assert gone.status_code == 404 and len(sdk_reached) == reached + 1


LONG = "trigger-long-running-operation"


async def test_only_lane_calls_keep_an_sdk_session_from_its_idle_timeout(gw: Harness, sdk_reached: list[str]) -> None:
    endpoint = endpoint_of(gw)
    endpoint.streaming.session_idle_timeout = 0.5  # for the sessions opened from now on
    token = await gw.open_session("long-bot")
    async with gw.http() as http:
        session = await McpSession(http, token).open()
        reached = len(sdk_reached)
        long = await session.call(1, LONG, {"duration": 1.5, "steps": 1})  # three idle timeouts in flight
        assert by_lane(long) and "completed" in message_of(long)["result"]["content"][0]["text"]
        assert endpoint.has_session(session.id)
        assert by_lane(after := await session.call(2, "echo", {"message": "still"}))
        assert message_of(after)["result"]["content"][0]["text"] == "Echo: still"
        assert len(sdk_reached) == reached


@pytest.mark.parametrize(("request_id", "named"), [("long-1", "long-1"), (5, "5")])  # a stringified id correlates too
async def test_a_lane_call_the_client_cancels_is_cut_and_recorded_cancelled(
    gw: Harness, request_id: int | str, named: str
) -> None:
    token = await gw.open_session("long-bot")
    sid = gw.gateway.tokens.verify(token).sid
    written = Written(gw)
    async with gw.http() as http:
        session = await McpSession(http, token).open()
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await session.call(request_id, LONG, {"duration": 30, "steps": 30}))

            tg.start_soon(call)
            allowed = await written.until("tool.call", session=sid, tool=LONG)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": named}}
            assert (await session.post(cancel)).status_code == 202  # the SDK still answers the notification
        outcome = await written.until("tool.result", call_id=allowed["call_id"])
    [answer] = answers
    assert by_lane(answer) and message_of(answer) == {
        "jsonrpc": "2.0",
        "id": request_id,  # the call's own
        "error": {"code": -32800, "message": "Request cancelled"},
    }
    assert outcome["outcome"] == "cancelled"


@pytest.mark.parametrize("end", ["deleted", "revoked"])
async def test_a_lane_call_whose_session_ends_is_cut(gw: Harness, end: str) -> None:
    """The MCP session DELETEd mid-call: the SDK's JSON-mode 500, outcome `cancelled`. The agent session revoked
    mid-call: as a 2026-07-28 call waiting for its JSON answer, the Errors table's 401, recorded `revoked` once."""
    token = await gw.open_session("long-bot")
    sid = gw.gateway.tokens.verify(token).sid
    written = Written(gw)
    async with gw.http() as http:
        session = await McpSession(http, token).open()
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await session.call(1, LONG, {"duration": 30, "steps": 30}))

            tg.start_soon(call)
            allowed = await written.until("tool.call", session=sid, tool=LONG)
            if end == "deleted":
                assert (await http.delete(PATH, headers=session.headers())).status_code == 200
            else:
                await gw.gateway.operations("test").end_session(sid, "revoked")
        outcome = await written.until("tool.result", call_id=allowed["call_id"])
    [answer] = answers
    if end == "deleted":
        assert answer.status_code == 500 and message_of(answer)["error"]["message"].startswith("Session terminated")
        assert outcome["outcome"] == "cancelled"
    else:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert outcome["outcome"] == "revoked"
    assert len([r for r in gw.audit("tool.result") if r["call_id"] == allowed["call_id"]]) == 1
