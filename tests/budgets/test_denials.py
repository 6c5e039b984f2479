"""A flood of denied calls: rate limited like real calls, and a bounded audit volume with capped fields.

Regression test for issue 12, finding 6 (60 calls with 1 MiB tool names wrote 60 MiB of fsynced
audit in 4 s; denials counted against no rate limit).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.audit.chain import record_hash
from gateway.audit.metrics import CALLS
from gateway.report.chargeback import build
from tests.audit.conftest import broken_links
from tests.support.counter import stop_of
from tests.support.harness import Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

FLOOD, PER_MINUTE, FULL = 40, 10, 5
NAME_CAP = 256  # gateway.audit.records.CAP_NAME
HUGE = "x" * ((1 << 20) - 4096)  # a tool name of almost 1 MiB (its "Unknown tool" answer must fit the client's
#                                  1 MiB event limit)
AGENTS = {
    "bot": {
        "owner": "ops@example.com",
        "grant": {"tools": ["time.get_current_time"], "budget": {"calls_per_minute": PER_MINUTE}},
    }
}
AUDIT = {"path": "./state/audit.jsonl", "fsync": "always", "denials_per_minute": FULL}


def denied_in_metrics(agent: str) -> float:
    """gateway_tool_calls_total summed over `agent`'s denied calls (the series are process-wide)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in CALLS.render()
        if f'agent="{agent}"' in line and 'decision="deny"' in line
    )


async def wait_for_record(gw: Harness, event: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while not gw.audit(event):
            await anyio.sleep(0.05)
    return gw.audit(event)[0]


async def test_a_flood_of_denied_calls_is_rate_limited_and_writes_a_bounded_audit_with_capped_fields(tmp_path: Path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS, extra={"audit": AUDIT}) as gw:
        gw.clock.advance(60 - gw.clock() % 60 + 1)  # one second into a fresh minute
        token = await gw.open_session("bot")
        path = gw.gateway.config.audit.path
        # Handshake era: the name travels in the body only (2026-07-28 also puts it in a header, which
        # the HTTP server caps long before the gateway sees it).
        async with gw.client(token, mode="legacy") as client:
            await client.list_tools()
            before, denied_before = path.stat().st_size, denied_in_metrics("bot")
            unknown = limited = 0
            for _ in range(FLOOD):
                try:
                    result = await client.call_tool(HUGE, {})
                except MCPError as exc:
                    assert exc.error.message.startswith("Unknown tool: ")
                    unknown += 1
                else:
                    assert stop_of(result)["limit"] == "calls_per_minute"
                    limited += 1
            assert (unknown, limited) == (PER_MINUTE, FLOOD - PER_MINUTE)
            # The denials used the agent's rate: its granted tool is refused too this minute.
            granted = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert stop_of(granted)["limit"] == "calls_per_minute"
            grown = path.stat().st_size - before
        assert grown < 16 * 1024, f"{FLOOD} denied calls wrote {grown} bytes of audit"

        denied = [r for r in gw.audit("tool.call") if r["decision"] == "deny"]
        assert len(denied) == FULL
        for record in denied:
            assert record["tool"] == HUGE[:NAME_CAP]
            assert record["tool_length"] == len(HUGE)
            assert record["tool_sha256"] == hashlib.sha256(HUGE.encode()).hexdigest()
            assert record["hash"] == record_hash(record)

        gw.clock.advance(60)  # the minute ends: the rest are written as one counted record
        aggregate = await wait_for_record(gw, "denials.aggregated")
        assert aggregate["session"] == gw.gateway.tokens.verify(token).sid and aggregate["agent"] == "bot"
        assert aggregate["count"] == FLOOD + 1 - FULL
        assert aggregate["reasons"] == {
            "unknown_or_not_granted": PER_MINUTE - FULL,
            "calls_per_minute": FLOOD + 1 - PER_MINUTE,
        }
        assert denied_in_metrics("bot") - denied_before == FLOOD + 1  # /metrics agrees with the ledger
        totals = build(gw.audit(), "agent").totals
        assert (totals["denials"], totals["stops"], totals["calls"]) == (PER_MINUTE, FLOOD + 1 - PER_MINUTE, 0)
    assert broken_links(gw.gateway) == [None]


async def test_reads_on_a_stopped_session_are_recorded_in_full_only_up_to_denials_per_minute(tmp_path: Path):
    """Regression: a stop on resources/read (prompts/get, completion) wrote a full durable record every time,
    so a stopped session could still grow the audit without bound."""
    agents = {
        "reader": {
            "owner": "r@example.com",
            "grant": {"tools": ["time.get_current_time"], "resources": ["time"], "budget": {"session_calls": 1}},
        }
    }
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra={"audit": AUDIT}) as gw:
        gw.clock.advance(60 - gw.clock() % 60 + 1)  # one second into a fresh minute
        async with gw.client(await gw.open_session("reader")) as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            assert stop_of(await client.call_tool("time__get_current_time", {"timezone": "UTC"}))
            for _ in range(3 * FULL):
                with pytest.raises(MCPError) as stopped:
                    await client.read_resource("time+time://now")
                assert stopped.value.error.code == -32010
        reads = [r for r in gw.audit("resource.read") if r["decision"] == "deny"]
        assert len(reads) <= FULL
