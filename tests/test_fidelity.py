"""Faithful pass-through: one regression test per cause the conformance suite found (issue 15).

Upstreams are real: the Python SDK's own server (tests/support/servers/conformance.py) over stdio and
streamable HTTP, once serving results without `resultType` and garbling one body, and server-everything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.conformance import fixture_http, fixture_stdio_manifest
from tests.support.harness import HEADERS, Harness, everything_stdio_manifest, http_manifest, running_gateway

pytestmark = pytest.mark.anyio

SERVERS = ("conf-http", "conf-bare", "conf-stdio", "conf-legacy", "everything")
AGENTS = {
    "fidelity-bot": {
        "owner": "qa@example.com",
        "grant": {"tools": [f"{s}.*" for s in SERVERS], "resources": list(SERVERS), "prompts": list(SERVERS)},
    },
}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with fixture_http() as url, fixture_http("--omit-result-type", "--garble") as bare:
        manifests = [
            http_manifest("conf-http", url, isolation="per_session"),
            http_manifest("conf-bare", bare),
            fixture_stdio_manifest("conf-stdio", isolation="per_session"),
            http_manifest("conf-legacy", url, protocol="2025-11-25"),
            everything_stdio_manifest(isolation="per_session"),
        ]
        async with running_gateway(tmp_path_factory.mktemp("fidelity"), manifests=manifests, agents=AGENTS) as gw:
            yield gw


@pytest.fixture
async def token(gw: Harness) -> str:
    return await gw.open_session("fidelity-bot", task="fidelity")


def only_text(result: Any) -> str:
    assert isinstance(result, types.CallToolResult | types.GetPromptResult), result
    content = result.content if isinstance(result, types.CallToolResult) else result.messages[0].content
    blocks = content if isinstance(content, list) else [content]
    return " ".join(b.text for b in blocks if isinstance(b, types.TextContent))


async def sampled(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text", text="Paris"))


async def elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada", "context": "tests", "color": "green"})


async def listed_roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///srv/work")])


# ------------------------------------------------------------------ 1. liberal in what upstreams answer


async def test_a_result_without_result_type_is_read_as_complete(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-bare")) as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("test_simple_text", {})
        assert only_text(result) == "This is a simple text response for testing."
        prompt = await client.get_prompt("test_simple_prompt")
        assert only_text(prompt) == "This is a simple prompt for testing."


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_upstreams_malformed_body_is_the_upstreams_fault_not_the_callers(
    gw: Harness, token: str, mode: str
) -> None:
    async with gw.client(token, url=gw.server_url("conf-bare"), mode=mode) as client:
        result = await client.call_tool("test_garbled", {})
    assert result.is_error  # an upstream fault on tools/call is a tool result in plain words, never -32700/-32602
    assert "conf-bare" in only_text(result)
    records = [r for r in gw.audit("tool.result") if r.get("tool") == "test_garbled"]
    assert records and records[-1]["outcome"] == "error"


# ------------------------------------------------------------------ 2. the caller's capabilities go upstream


async def test_a_client_without_sampling_gets_the_upstreams_missing_capability_error(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-http")) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("test_missing_capability", {})
    assert raised.value.error.code == -32021
    async with gw.client(token, url=gw.server_url("conf-http"), sampling_callback=sampled) as client:
        assert only_text(await client.call_tool("test_missing_capability", {})) == "Success"


@pytest.mark.parametrize("server", ["conf-http", "conf-stdio"])
async def test_the_upstream_asks_only_for_what_the_client_declared(gw: Harness, token: str, server: str) -> None:
    async with gw.client(token, url=gw.server_url(server), sampling_callback=sampled) as client:
        first = await client.session.call_tool("test_input_required_result_capabilities", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        assert set(first.input_requests or {}) == {"sample_input"}  # no elicitation: the client never declared it
        result = await client.call_tool("test_input_required_result_capabilities", {})
    assert only_text(result) == "capabilities-ok: received sample_input"


async def test_a_shared_handshake_upstream_never_reaches_a_client_that_did_not_declare_the_capability(
    gw: Harness, token: str
) -> None:
    async with gw.client(token, url=gw.server_url("conf-legacy"), mode="legacy") as client:
        result = await client.call_tool("test_elicitation", {"message": "who?"})
    assert "not supported or error" in only_text(result)  # the gateway refused it on the client's behalf


# ------------------------------------------------------------------ 3. input requests on prompts/get, resources/read


@pytest.mark.parametrize("server", ["conf-http", "conf-stdio"])
async def test_a_prompt_that_needs_input_gets_it_from_the_client(gw: Harness, token: str, server: str) -> None:
    async with gw.client(token, url=gw.server_url(server), elicitation_callback=elicited) as client:
        first = await client.session.get_prompt("test_input_required_result_prompt", allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        assert set(first.input_requests or {}) == {"user_context"}
        assert first.request_state  # sealed by the gateway
        prompt = await client.get_prompt("test_input_required_result_prompt")
    assert only_text(prompt) == "Prompt with context: tests"


async def test_a_tool_exchange_state_does_not_resume_a_prompt(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-http"), elicitation_callback=elicited) as client:
        first = await client.session.call_tool("test_input_required_result_elicitation", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        with pytest.raises(MCPError) as raised:
            await client.session.get_prompt(
                "test_input_required_result_prompt",
                request_state=first.request_state,
                input_responses={},
                allow_input_required=True,
            )
    assert raised.value.error.code == types.INVALID_PARAMS


# ------------------------------------------------------------------ 4. one round, the upstream's keys


@pytest.mark.parametrize("server", ["conf-http", "conf-stdio"])
async def test_all_of_a_rounds_requests_arrive_in_one_round_under_the_upstreams_keys(
    gw: Harness, token: str, server: str
) -> None:
    callbacks = {"sampling_callback": sampled, "elicitation_callback": elicited, "list_roots_callback": listed_roots}
    async with gw.client(token, url=gw.server_url(server), **callbacks) as client:
        first = await client.session.call_tool(
            "test_input_required_result_multiple_inputs", {}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult)
        assert set(first.input_requests or {}) == {"user_name", "greeting", "client_roots"}
        result = await client.call_tool("test_input_required_result_multiple_inputs", {})
    assert only_text(result) == "Name: Ada; Greeting: Paris; Roots: 1"


async def test_a_question_the_client_left_unanswered_is_asked_again(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-http"), elicitation_callback=elicited) as client:
        first = await client.session.call_tool("test_input_required_result_elicitation", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        again = await client.session.call_tool(
            "test_input_required_result_elicitation",
            {},
            input_responses={},
            request_state=first.request_state,
            allow_input_required=True,
        )
    assert isinstance(again, types.InputRequiredResult)
    assert set(again.input_requests or {}) == {"user_name"}


# ------------------------------------------------------------------ 5. eras


async def test_a_handshake_client_keeps_sampling_on_a_per_session_upstream(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-stdio"), mode="legacy", sampling_callback=sampled) as client:
        result = await client.call_tool("test_sampling", {"prompt": "capital of France?"})
    assert only_text(result) == "LLM response: Paris"  # driven at 2026-07-28 the tool could not ask


async def test_a_pinned_handshake_upstream_serves_a_2026_client_through_input_rounds(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-legacy"), elicitation_callback=elicited) as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("test_elicitation", {"message": "who?"})
    assert only_text(result).startswith("User response: action=accept")


async def test_a_manifest_protocol_outside_the_three_is_refused(tmp_path: Any) -> None:
    from gateway.errors import ConfigError
    from gateway.upstream.manifests import read_manifest

    path = tmp_path / "x.yaml"
    path.write_text(
        "name: x\nowner: a@example.com\ntransport: stdio\ncommand: python\ntools: '*'\nprotocol: 2025-06-18\n"
    )
    with pytest.raises(ConfigError, match="protocol"):
        read_manifest(path)


# ------------------------------------------------------------------ 7. headers, caching, order


async def test_an_mcp_method_header_that_contradicts_the_body_is_refused(gw: Harness, token: str) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    headers = {
        **HEADERS,
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(gw.server_url("conf-http"), json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


async def test_filtered_lists_stay_private_and_in_a_stable_order(gw: Harness, token: str) -> None:
    async with gw.client(token, url=gw.server_url("conf-http")) as client:
        first = await client.session.list_tools()
        second = await client.session.list_tools()
    assert first.cache_scope == "private"  # the upstream said public; the list is this agent's grant
    assert [t.name for t in first.tools] == [t.name for t in second.tools]


# ------------------------------------------------------------------ 6. resumable SSE streams


def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if ":" in line and not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = fields.get(key, "") + value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


async def _legacy_session(http: httpx.AsyncClient, url: str, token: str) -> dict[str, str]:
    headers = {**HEADERS, "authorization": f"Bearer {token}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await http.post(url, json=init, headers=headers)
    assert response.status_code == 200, response.text
    headers = {**headers, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


async def test_a_dropped_stream_resumes_from_its_last_event_id(gw: Harness, token: str) -> None:
    url = gw.server_url("conf-http")
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        headers = await _legacy_session(http, url, token)
        events = sse_events((await http.post(url, json=call, headers=headers)).text)
        priming = events[0]
        assert priming["id"] and priming.get("data", "") == "" and priming["retry"] == "1000"
        assert all(e.get("id") for e in events)
        assert json.loads(events[-1]["data"])["id"] == 7
        replayed: list[dict[str, Any]] = []
        with anyio.fail_after(5):  # the resumed stream stays open for what comes next: read up to the result
            async with http.stream("GET", url, headers={**headers, "last-event-id": priming["id"]}) as replay:
                seen = ""
                async for chunk in replay.aiter_text():
                    seen += chunk
                    replayed = [json.loads(e["data"]) for e in sse_events(seen) if e.get("data")]
                    if any(m.get("id") == 7 for m in replayed):
                        break
        assert [m.get("method") or m["id"] for m in replayed] == [
            json.loads(e["data"]).get("method") or json.loads(e["data"])["id"] for e in events[1:]
        ]
        # Another MCP session of the same agent presenting that id gets nothing of this one's stream.
        other = await _legacy_session(http, url, token)
        stolen = await http.get(url, headers={**other, "last-event-id": priming["id"]})
    assert not [e for e in sse_events(stolen.text) if e.get("data")]
