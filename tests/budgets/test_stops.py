"""Budget stops on real traffic: what the agent is told, what the upstream never sees, how an operator lifts it."""

from __future__ import annotations

import anyio
import pytest

from gateway import cli
from gateway.errors import AuthError
from tests.support.counter import agent, counter_manifest, sid_of, stop_of, upstream_calls
from tests.support.harness import everything_stdio_manifest, running_gateway

pytestmark = pytest.mark.anyio


async def test_a_session_that_runs_out_of_tokens_mid_task_is_stopped_and_nothing_more_reaches_the_upstream(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"session_tokens": 400})}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        token = await gw.open_session("bot", task="summarise")
        sid = await sid_of(gw, token)
        async with gw.client(token) as client:
            results = []
            for _ in range(10):
                results.append(await client.call_tool("counter__words", {"count": 60}))
                if results[-1].is_error:
                    break
            admitted = len(results) - 1
            assert admitted >= 1 and upstream_calls(log) == ["words 60"] * admitted
            stop = stop_of(results[-1])
            assert stop["limit"] == "session_tokens" and stop["max"] == 400 and stop["used"] >= 400 - 30
            text = results[-1].content[0].text
            assert text.startswith("STOP:") and "token budget" in text and f"/{400})" in text

            # Suspended: every further call, to any tool, gets the same stop and nothing is forwarded.
            again = await client.call_tool("counter__echo", {"text": "one more"})
            assert stop_of(again)["limit"] == "session_tokens"
            assert len(upstream_calls(log)) == admitted
            assert (await client.list_tools()).tools  # the token still authenticates

        session = await gw.gateway.store.get_session(sid)
        assert session is not None and session.state == "suspended"
        exceeded = gw.audit("budget.exceeded")
        assert [(r["session"], r["reason"], r["scope"]) for r in exceeded] == [(sid, "session_tokens", "session")]
        denied = [r for r in gw.audit("tool.call") if r["decision"] == "deny"]
        assert [r["reason"] for r in denied] == ["session_tokens", "session_tokens"]

        # An operator lifts the stop with more tokens; the very next call goes through.
        config = str(gw.root / "gateway.yaml")
        code = await anyio.to_thread.run_sync(
            cli.main, ["sessions", "resume", sid, "--add-tokens", "500", "--config", config]
        )
        assert code == 0
        async with gw.client(token) as client:
            assert not (await client.call_tool("counter__echo", {"text": "resumed"})).is_error
        assert upstream_calls(log)[-1] == "echo resumed"


async def test_eight_concurrent_clients_on_one_session_forward_exactly_as_many_calls_as_the_budget_allows(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], agents={"bot": agent({"session_calls": 5})}
    ) as gw:
        token = await gw.open_session("bot")
        outcomes: list[bool] = []

        async def client_calls(n: int) -> None:
            async with gw.client(token, mode="legacy" if n % 2 else "auto") as client:
                for i in range(3):
                    result = await client.call_tool("counter__echo", {"text": f"{n}-{i}"})
                    outcomes.append(result.is_error)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(client_calls, n)

        assert outcomes.count(False) == 5 and outcomes.count(True) == 19
        assert len(upstream_calls(log)) == 5
        session = await gw.gateway.store.get_session(await sid_of(gw, token))
        assert session is not None and session.calls == 5 and session.state == "suspended"
        assert len(gw.audit("budget.exceeded")) == 1


async def test_a_suspended_session_is_refused_resource_reads_with_a_json_rpc_stop_error(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"session_calls": 1}, tools=["counter.*"], resources=["everything"])}
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log), everything_stdio_manifest()], agents=agents
    ) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token, mode="legacy") as client:
            assert not (await client.call_tool("counter__echo", {"text": "a"})).is_error
            assert stop_of(await client.call_tool("counter__echo", {"text": "b"}))["limit"] == "session_calls"
            with pytest.raises(Exception) as caught:
                await client.read_resource("everything+demo://resource/static/document/architecture.md")
        error = caught.value
        assert getattr(error, "code", None) == -32010, error
        assert "STOP" in str(error)
        reads = gw.audit("resource.read")
        assert reads[-1]["decision"] == "deny" and reads[-1]["reason"] == "session_calls"


async def test_a_suspended_session_cannot_be_escaped_by_opening_another(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"session_calls": 1, "max_active_sessions": 1})}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            await client.call_tool("counter__echo", {"text": "a"})
            assert stop_of(await client.call_tool("counter__echo", {"text": "b"}))["limit"] == "session_calls"
        with pytest.raises(AuthError) as refused:
            await gw.open_session("bot")
        assert refused.value.error == "access_denied" and "max_active_sessions" in refused.value.reason


async def test_daily_tokens_span_the_sessions_of_one_agent_and_reset_at_midnight_utc(tmp_path):
    log = tmp_path / "calls.log"
    agents = {"bot": agent({"daily_tokens": 300}), "other": agent({"daily_tokens": 300})}
    async with running_gateway(tmp_path, manifests=[counter_manifest(log)], agents=agents) as gw:
        first = await gw.open_session("bot")
        async with gw.client(first) as client:
            while not (result := await client.call_tool("counter__words", {"count": 60})).is_error:
                pass
            assert stop_of(result)["limit"] == "daily_tokens"
        forwarded = len(upstream_calls(log))

        second = await gw.open_session("bot", task="a fresh start")
        async with gw.client(second) as client:
            refused = await client.call_tool("counter__echo", {"text": "x"})
        stop = stop_of(refused)
        assert stop["limit"] == "daily_tokens" and stop["resets_at"].endswith("T00:00:00Z")
        assert "daily token budget" in refused.content[0].text
        assert len(upstream_calls(log)) == forwarded

        async with gw.client(await gw.open_session("other")) as client:  # another agent has its own day
            assert not (await client.call_tool("counter__echo", {"text": "y"})).is_error

        gw.clock.advance(86400)
        async with gw.client(await gw.open_session("bot", task="tomorrow")) as client:
            assert not (await client.call_tool("counter__echo", {"text": "z"})).is_error
