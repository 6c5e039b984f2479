"""Two gateway replicas on one PostgreSQL database act as one gateway.

Replica A runs in the test's event loop (so the test can open and end sessions
the way an endpoint would); replica B is a separate `mcp-gateway serve` process.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from gateway.errors import AuthError
from tests.identity.support import call_time, cli, mcp_status
from tests.replicas.support import Replica, in_process_replica, serve_replica, upstream_count
from tests.support.harness import (
    Harness,
    connect,
    dynamic_manifest,
    everything_stdio_manifest,
    free_port,
    time_manifest,
)
from tests.support.postgres import database

pytestmark = pytest.mark.anyio

BUDGET = 20
AGENTS: dict[str, Any] = {
    "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}},
    "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["time.*"]}},
    "carol-bot": {"owner": "carol@example.com", "grant": {"tools": ["time.*"]}},
    "drain-bot": {
        "owner": "dana@example.com",
        "grant": {"tools": ["dynamic.speak"], "budget": {"session_calls": BUDGET}},
    },
    "meter-bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.count"]}},
    "sampler-bot": {"owner": "sam@example.com", "grant": {"tools": ["everything.trigger-sampling-request"]}},
}
MANIFESTS = [time_manifest(), dynamic_manifest(), everything_stdio_manifest(isolation="per_session")]


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Harness, Replica]]:
    root = tmp_path_factory.mktemp("replicas")
    shared = {
        "public_url": f"http://127.0.0.1:{free_port()}",
        "manifests": MANIFESTS,
        "agents": AGENTS,
        "audit": {"path": "./state/audit.jsonl", "checkpoint_every": 5},
    }
    async with (
        database() as dsn,
        in_process_replica(root / "a", dsn=dsn, instance="replica-a", **shared) as a,
        serve_replica(root / "b", dsn=dsn, instance="replica-b", **shared) as b,
    ):
        yield a, b


async def test_a_session_opened_on_one_replica_works_on_the_other(replicas: tuple[Harness, Replica]) -> None:
    a, b = replicas
    session, token = await a.gateway.sessions.open("alice-bot", task="cross-replica", via="test")
    assert not (await call_time(b, token)).is_error
    # Each replica writes its own chain, tagged with its instance.
    assert [r["gateway"] for r in a.audit("session.opened") if r["session"] == session.sid] == ["replica-a"]
    calls = [r for r in b.audit("tool.call") if r["session"] == session.sid]
    assert [(r["gateway"], r["decision"], r["agent"]) for r in calls] == [("replica-b", "allow", "alice-bot")]
    stored = await a.gateway.store.get_session(session.sid)
    assert stored is not None and stored.calls == 1


async def test_a_revocation_on_one_replica_refuses_the_very_next_call_on_the_other(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    session, token = await a.gateway.sessions.open("bob-bot", via="test")
    async with b.client(token, mode="legacy") as client:
        assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        assert await a.gateway.sessions.end(session.sid, "revoked", "revoked")
        with pytest.raises(MCPError):  # the SDK's answer to an HTTP 401 mid-session
            await client.call_tool("time__get_current_time", {"timezone": "UTC"})
    refused = await mcp_status(b, token)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert len([r for r in b.audit("tool.call") if r["session"] == session.sid]) == 1


async def test_an_agent_disabled_on_one_replica_cannot_start_a_session_on_the_other(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    _, earlier = await a.gateway.sessions.open("carol-bot", via="test")
    assert (await mcp_status(b, earlier)).status_code == 200
    assert "revoked 1 session(s)" in await cli(b, "agents", "disable", "carol-bot")
    with pytest.raises(AuthError, match="unknown or disabled"):
        await a.gateway.sessions.open("carol-bot", via="test")
    assert (await mcp_status(a, earlier)).status_code == 401


async def test_eight_clients_across_both_replicas_drain_a_session_budget_exactly(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    session, token = await a.gateway.sessions.open("drain-bot", via="test")
    stops: list[str] = []

    async def drain(url: str) -> None:
        async with connect(url, token) as client:
            while not (result := await client.call_tool("dynamic__speak", {})).is_error:
                pass
            stops.append(result.content[0].text)  # type: ignore[union-attr]

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(drain, (a.mcp_url, b.mcp_url)[n % 2])

    assert len(stops) == 8 and all(text.startswith("STOP") for text in stops)
    served = [await upstream_count(url, await a.open_session("meter-bot")) for url in (a.mcp_url, b.mcp_url)]
    assert sum(served) == BUDGET and all(served), served  # what the two upstreams really received
    allowed = [
        r
        for r in a.audit("tool.call") + b.audit("tool.call")
        if r["session"] == session.sid and r["decision"] == "allow"
    ]
    assert len(allowed) == BUDGET
    stored = await a.gateway.store.get_session(session.sid)
    assert stored is not None and (stored.calls, stored.state) == (BUDGET, "suspended")


async def test_a_paused_call_retried_on_another_replica_fails_cleanly_and_still_completes_where_it_began(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    token = await a.open_session("sampler-bot")
    tool = "everything__trigger-sampling-request"

    async def unused(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        raise AssertionError("the test answers the sampling request itself")

    async with a.client(token, sampling_callback=unused) as on_a, b.client(token, sampling_callback=unused) as on_b:
        paused = await on_a.session.call_tool(tool, {"prompt": "x"}, allow_input_required=True)
        assert isinstance(paused, types.InputRequiredResult) and paused.request_state
        (key,) = paused.input_requests or {}
        answer = types.CreateMessageResult(
            role="assistant", model="m", content=types.TextContent(type="text", text="answered")
        )
        retry = {"input_responses": {key: answer}, "request_state": paused.request_state, "allow_input_required": True}
        with pytest.raises(MCPError) as refused:
            await on_b.session.call_tool(tool, {"prompt": "x"}, **retry)
        assert "requestState is invalid" in refused.value.message
        done = await on_a.session.call_tool(tool, {"prompt": "x"}, **retry)
        assert isinstance(done, types.CallToolResult) and "answered" in done.content[0].text  # type: ignore[union-attr]


async def test_a_report_over_both_replicas_audit_files_joins_each_session_across_them(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    since = datetime.now(UTC).isoformat()
    session, token = await a.gateway.sessions.open("alice-bot", task="joined", via="test")
    assert not (await call_time(b, token)).is_error  # called on B
    assert await a.gateway.sessions.end(session.sid, "closed", "closed")  # closed on A
    streams = [str(replica.root / "state" / "audit.jsonl") for replica in (a, b)]
    both = json.loads(await cli(a, "report", "--since", since, "--format", "json", *streams))
    only_b = json.loads(await cli(b, "report", "--since", since, "--format", "json"))
    assert set(streams) <= set(both["sources"])
    assert both["totals"]["calls"] == only_b["totals"]["calls"] == 1
    # Only the two files together show the call's session was closed cleanly.
    assert both["evidence"]["by_session_outcome"]["closed"] == only_b["evidence"]["by_session_outcome"]["open"] == 1


async def test_audit_verify_checks_both_replicas_chains_and_their_checkpoints_with_the_stored_keys(
    replicas: tuple[Harness, Replica],
) -> None:
    a, b = replicas
    token = await a.open_session("alice-bot")
    for replica in (a, b):
        for _ in range(3):
            assert not (await call_time(replica, token)).is_error
    streams = [str(replica.root / "state" / "audit.jsonl") for replica in (a, b)]
    both = await cli(a, "audit", "verify", *streams)
    for instance in ("replica-a", "replica-b"):
        assert re.search(rf"^{instance}: intact, .* [1-9][0-9]* checkpoints?$", both, re.M), both
    own = await cli(b, "audit", "verify")  # B's stream, and the checkpoint the store keeps for it
    assert re.search(r"^replica-b: intact, .*, reaches the store's checkpoint at seq [0-9]+$", own, re.M), own
