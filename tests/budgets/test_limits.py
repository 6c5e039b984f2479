"""Loops, rate limits, per-tool caps, threshold alerts and grant changes on real traffic."""

from __future__ import annotations

import pytest

from gateway.store.base import AgentRecord
from tests.support.counter import agent, counter_manifest, sid_of, stop_of, upstream_calls
from tests.support.harness import running_gateway

pytestmark = pytest.mark.anyio


async def test_the_same_call_repeated_past_loop_repeats_blocks_that_tool_for_the_session(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"loop_repeats": 3, "loop_window": "60s"})}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            for _ in range(3):
                assert not (await client.call_tool("counter__echo", {"text": "are we there yet"})).is_error
            looped = await client.call_tool("counter__echo", {"text": "are we there yet"})
            stop = stop_of(looped)
            assert stop["limit"] == "loop_repeats" and stop["tool"] == "counter.echo" and stop["used"] == 4
            assert looped.content[0].text.startswith("STOP calling counter.echo")
            # The agent can tell its user exactly how an operator lifts the stop.
            assert looped.content[0].text.endswith(f"mcp-gateway sessions resume {stop['session']}")
            # The tool stays blocked, whatever the arguments; other tools keep working.
            other = await client.call_tool("counter__echo", {"text": "something else"})
            assert stop_of(other)["limit"] == "loop_repeats"
            assert not (await client.call_tool("counter__words", {"count": 2})).is_error
        assert upstream_calls(log) == ["echo are we there yet"] * 3 + ["words 2"]
        session = await gw.gateway.store.get_session(await sid_of(gw, token))
        assert session is not None and session.state == "active"
        exceeded = gw.audit("budget.exceeded")
        assert [(r["reason"], r["scope"], r["tool"]) for r in exceeded] == [("loop_repeats", "tool", "echo")]


async def test_varied_calls_and_repeats_spread_beyond_the_window_never_trip_loop_detection(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"loop_repeats": 2, "loop_window": "30s"})}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            for i in range(12):
                assert not (await client.call_tool("counter__echo", {"text": f"page {i}"})).is_error
            for _ in range(4):
                assert not (await client.call_tool("counter__echo", {"text": "poll"})).is_error
                gw.clock.advance(16)
        assert len(upstream_calls(log)) == 16
        assert gw.audit("budget.exceeded") == []


async def test_calls_per_minute_refuses_with_a_retry_after_and_does_not_suspend(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], agents={"bot": agent({"calls_per_minute": 2})}
    ) as gw:
        gw.clock.advance(60 - gw.clock() % 60 + 1)  # one second into a fresh minute
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            for i in range(2):
                assert not (await client.call_tool("counter__echo", {"text": str(i)})).is_error
            limited = await client.call_tool("counter__echo", {"text": "2"})
            stop = stop_of(limited)
            assert stop["limit"] == "calls_per_minute" and stop["scope"] == "call"
            assert (stop["used"], stop["max"]) == (2, 2) and 1 <= stop["retry_after_s"] <= 60
            assert limited.content[0].text.startswith("RATE LIMITED")
            gw.clock.advance(stop["retry_after_s"])
            assert not (await client.call_tool("counter__echo", {"text": "3"})).is_error
        session = await gw.gateway.store.get_session(await sid_of(gw, token))
        assert session is not None and session.state == "active"
        assert upstream_calls(log) == ["echo 0", "echo 1", "echo 3"]
        assert gw.audit("budget.exceeded") == []


async def test_the_rate_limit_counts_every_session_of_the_agent(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], agents={"bot": agent({"calls_per_minute": 3})}
    ) as gw:
        gw.clock.advance(60 - gw.clock() % 60 + 1)
        refused = 0
        for n in range(2):
            async with gw.client(await gw.open_session("bot", task=f"t{n}")) as client:
                for i in range(2):
                    refused += (await client.call_tool("counter__echo", {"text": f"{n}{i}"})).is_error
        assert refused == 1 and len(upstream_calls(log)) == 3


async def test_a_per_tool_cap_refuses_only_that_tool_once_it_is_used_up(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], agents={"bot": agent({"tool_calls": {"counter.words": 2}})}
    ) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            for n in (1, 2):
                assert not (await client.call_tool("counter__words", {"count": n})).is_error
            stop = stop_of(await client.call_tool("counter__words", {"count": 3}))
            assert (stop["limit"], stop["used"], stop["max"], stop["tool"]) == ("tool_calls", 2, 2, "counter.words")
            assert not (await client.call_tool("counter__echo", {"text": "fine"})).is_error
        assert upstream_calls(log) == ["words 1", "words 2", "echo fine"]


async def test_budget_thresholds_fire_once_each_per_session(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"session_calls": 4, "daily_tokens": 1_000_000}, alerts=[0.5, 1.0])}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        sids = []
        for n in range(2):
            token = await gw.open_session("bot", task=f"t{n}")
            sids.append(await sid_of(gw, token))
            async with gw.client(token) as client:
                for i in range(5):
                    await client.call_tool("counter__echo", {"text": f"{n}-{i}"})
        calls = [(r["session"], r["share"]) for r in gw.audit("budget.threshold") if r["reason"] == "session_calls"]
        assert calls == [(sids[0], 0.5), (sids[0], 1.0), (sids[1], 0.5), (sids[1], 1.0)]
        assert [r for r in gw.audit("budget.threshold") if r["reason"] == "daily_tokens"] == []


async def test_daily_threshold_alerts_fire_once_per_agent_day_across_sessions(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"daily_tokens": 2000}, alerts=[0.1, 0.2])}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        for n in range(3):
            async with gw.client(await gw.open_session("bot", task=f"t{n}")) as client:
                await client.call_tool("counter__words", {"count": 60})
        daily = [r for r in gw.audit("budget.threshold") if r["reason"] == "daily_tokens"]
        assert [r["share"] for r in daily] == [0.1, 0.2]
        assert all(r["limit"] == 2000 and r["used"] >= r["share"] * 2000 for r in daily)


async def test_a_grant_change_applies_to_a_live_session_at_its_next_call(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents={}) as gw:
        store = gw.gateway.store
        generous = {"tools": ["counter.*"], "budget": {"session_calls": 100}}
        await store.create_agent(AgentRecord(id="cli-bot", owner="ops@example.com", grant=generous))
        token = await gw.open_session("cli-bot")
        async with gw.client(token) as client:
            for i in range(3):
                assert not (await client.call_tool("counter__echo", {"text": str(i)})).is_error
            await store.update_agent("cli-bot", grant={**generous, "budget": {"session_calls": 3}})
            gw.gateway.agents.forget("cli-bot")
            stop = stop_of(await client.call_tool("counter__echo", {"text": "after the change"}))
        assert (stop["limit"], stop["used"], stop["max"]) == ("session_calls", 3, 3)
        session = await store.get_session(await sid_of(gw, token))
        assert session is not None and session.calls_limit == 3
        assert session.grant_version == (await gw.gateway.agents.get("cli-bot")).grant.version  # type: ignore[union-attr]
        assert len(upstream_calls(log)) == 3
