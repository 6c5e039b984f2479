"""The 2026-07-28 tools/call fast lane answers and records exactly as the SDK path does.

The SDK path is driven honestly, by the lane's own rule: a request whose `_meta` carries a key the lane does
not know is left to the SDK, which ignores the key. So each call is made twice with the same meaning, once
taken by the lane and once by the SDK, on two sessions of the same agent, and the answers and the audit
records must not differ beyond what differs between any two calls (ids, times, hashes, the session).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from tests.support.harness import Harness, everything_stdio_manifest, running_gateway

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
    }
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


# On the aggregate view names are namespaced, and a result's resource links are renamed there.
VIEWS = pytest.mark.parametrize(("path", "prefix"), [(PATH, ""), ("/mcp", "everything__")])


@VIEWS
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(st.sampled_from(sorted(CALLS)), st.text("abcxyz", min_size=1, max_size=8)), max_size=6))
@example(calls=[("granted", "a"), ("granted", "b"), ("granted", "c"), ("constraint", "d")])  # stopped after two
@example(calls=[(kind, "x") for kind in sorted(CALLS)])
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
