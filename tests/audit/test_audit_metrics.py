"""/metrics after known traffic: the counts match what happened (and what the audit stream says)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import everything_stdio_manifest, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-0123456789"
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_a_scrape_after_known_traffic_shows_matching_counts(tmp_path: Path):
    agents = {
        "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}},
        "bob-bot": {
            "owner": "bob@example.com",
            "grant": {"tools": ["time.get_current_time"], "budget": {"session_calls": 2}},
        },
    }
    async with (
        running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra={"admin_token": ADMIN}) as gw,
        gw.http() as http,
    ):
        before = await scrape(http)
        alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
        async with gw.client(alice) as client:
            for _ in range(3):
                assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("time__nope", {})
        usage = await http.post(
            "/v1/usage",
            headers={"authorization": f"Bearer {alice}"},
            json={"model": "some-model", "input_tokens": 1200, "output_tokens": 345},
        )
        assert usage.status_code == 200, usage.text
        async with gw.client(bob) as client:
            results = [await client.call_tool("time__get_current_time", {"timezone": "UTC"}) for _ in range(3)]
        assert [r.is_error for r in results] == [False, False, True]
        after = await scrape(http)
        results_recorded = gw.audit("tool.result")

    calls = "gateway_tool_calls_total"
    tool = {"server": "time", "tool": "get_current_time"}
    assert delta(before, after, calls, agent="alice-bot", decision="allow", **tool) == 3
    assert delta(before, after, calls, agent="alice-bot", server="", tool="(unknown)", decision="deny") == 1
    assert delta(before, after, calls, agent="bob-bot", decision="allow", **tool) == 2
    assert delta(before, after, calls, agent="bob-bot", decision="deny", **tool) == 1
    assert delta(before, after, "gateway_budget_stops_total", agent="bob-bot", limit="session_calls") == 1
    assert delta(before, after, "gateway_tool_call_duration_seconds_count", **tool) == 5
    for agent in ("alice-bot", "bob-bot"):
        mine = [r for r in results_recorded if r["agent"] == agent]
        for direction in ("request", "response"):
            expected = sum(r[f"{direction}_tokens"] for r in mine)
            assert (
                delta(before, after, "gateway_tokens_total", agent=agent, server="time", direction=direction)
                == expected
            )
    for direction, tokens in (("model_input", 1200), ("model_output", 345)):
        assert delta(before, after, "gateway_tokens_total", agent="alice-bot", server="", direction=direction) == tokens
    assert after[("gateway_active_sessions", frozenset())] == 1  # bob's session is suspended
    assert delta(before, after, "gateway_audit_records_total", event="tool.call") == 7
    assert delta(before, after, "gateway_audit_write_seconds_count") > 0
    assert after[("gateway_audit_healthy", frozenset())] == 1


async def test_metrics_need_the_admin_token_unless_public(tmp_path: Path):
    async with running_gateway(tmp_path, manifests=[], agents={}, extra={"admin_token": ADMIN}) as gw:
        async with gw.http() as http:
            for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": ADMIN}):
                response = await http.get("/metrics", headers=headers)
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert (await http.get("/metrics", headers={"authorization": f"bearer {ADMIN}"})).status_code == 200
            gw.gateway.config = gw.gateway.config.model_copy(update={"metrics_public": True})
            assert (await http.get("/metrics")).status_code == 200


async def test_tokens_of_reads_and_prompts_are_counted_once_each_way(tmp_path: Path):
    agents = {
        "reader-bot": {"owner": "r@example.com", "grant": {"resources": ["everything"], "prompts": ["everything"]}}
    }
    async with (
        running_gateway(
            tmp_path, manifests=[everything_stdio_manifest()], agents=agents, extra={"admin_token": ADMIN}
        ) as gw,
        gw.http() as http,
    ):
        before = await scrape(http)
        async with gw.client(await gw.open_session("reader-bot")) as client:
            await client.read_resource("everything+demo://resource/static/document/architecture.md")
            await client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
        after = await scrape(http)
        outcomes = gw.audit("resource.result") + gw.audit("prompt.result")
    assert len(outcomes) == 2 and all(r["request_tokens"] or r["response_tokens"] for r in outcomes)
    for direction in ("request", "response"):
        assert delta(
            before, after, "gateway_tokens_total", agent="reader-bot", server="everything", direction=direction
        ) == sum(r[f"{direction}_tokens"] for r in outcomes)
