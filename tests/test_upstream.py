"""Upstream connections: real servers crash, hang, and run over HTTP; the gateway copes and cleans up."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import psutil
import pytest

from tests.support.harness import (
    dynamic_manifest,
    everything_http,
    http_manifest,
    running_gateway,
    time_manifest,
)

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "o@example.com", "grant": {"tools": ["*.*"], "resources": ["*"], "prompts": ["*"]}}}


def children_running(script: str) -> list[psutil.Process]:
    return [
        p for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and script in " ".join(p.cmdline())
    ]


async def test_an_upstream_killed_mid_call_gives_an_error_result_and_comes_back(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        sid = gw.gateway.tokens.verify(token).sid
        async with gw.client(token) as client:
            (victim,) = children_running("dynamic.py")
            result = None

            async def call() -> None:
                nonlocal result
                result = await client.call_tool("dynamic__slow", {"seconds": 30})

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(10):
                    while not [r for r in gw.audit("tool.call") if r["session"] == sid]:
                        await anyio.wait_all_tasks_blocked()
                victim.kill()
            assert result is not None and result.is_error
            assert "unavailable" in result.content[0].text and "closed the connection" in result.content[0].text
            outcome = [r for r in gw.audit("tool.result") if r["session"] == sid][-1]
            assert outcome["outcome"] == "error" and outcome["tool"] == "slow"

            again = await client.call_tool("dynamic__count", {})  # waits for the restarted server
            assert not again.is_error and again.structured_content == {"result": 0}
        (restarted,) = children_running("dynamic.py")
        assert restarted.pid != victim.pid
        assert gw.gateway.upstreams["dynamic"].main.restarts == 1


async def test_a_hung_upstream_call_times_out_with_an_error_result(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, manifests=[dynamic_manifest(timeout="1s")], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            result = await client.call_tool("dynamic__slow", {"seconds": 20})
            assert result.is_error and "did not answer within 1s" in result.content[0].text
            assert not (await client.call_tool("dynamic__count", {})).is_error
        assert gw.audit("tool.result")[-2]["outcome"] == "timeout"


async def test_stdio_children_get_a_minimal_environment_and_their_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "a-secret-the-child-must-not-see")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-one")
    manifests = [dynamic_manifest(env={"GREETING": "hello"})]
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            env = (await client.call_tool("dynamic__whoami", {})).structured_content
        (child,) = children_running("dynamic.py")
        assert Path(child.cwd()) == tmp_path / "state" / "upstreams" / "dynamic"
    assert env is not None
    assert env["GREETING"] == "hello"
    assert "GATEWAY_ADMIN_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "GREETING", "LC_CTYPE"}


async def test_shutdown_reaps_every_child_process(tmp_path: Path) -> None:
    manifests = [time_manifest(), dynamic_manifest(isolation="per_session")]
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        for _ in range(2):
            async with gw.client(await gw.open_session("bot")) as client:
                await client.call_tool("dynamic__count", {})
        assert len(children_running("dynamic.py")) == 3  # the catalog connection and one per session
    assert children_running("dynamic.py") == [] and children_running("mcp_server_time") == []


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_streamable_http_upstream_is_fronted_like_a_stdio_one(tmp_path: Path, mode: str) -> None:
    async with everything_http() as url:
        async with running_gateway(tmp_path, manifests=[http_manifest("remote", url)], agents=AGENTS) as gw:
            token = await gw.open_session("bot")
            async with gw.client(token, mode=mode) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                assert "remote__echo" in tools
                echoed = await client.call_tool("remote__echo", {"message": "over http"})
                assert echoed.content[0].text == "Echo: over http"
                summed = await client.call_tool("remote__get-sum", {"a": 2, "b": 3})
                assert "5" in summed.content[0].text
                read = await client.read_resource((await client.list_resources()).resources[0].uri)
                assert read.contents
            records = gw.audit("tool.result")
            assert [json.dumps(r["outcome"]) for r in records[-2:]] == ['"ok"', '"ok"']


async def test_an_unreachable_upstream_does_not_stop_the_gateway(tmp_path: Path) -> None:
    manifests = [time_manifest(), http_manifest("gone", "http://127.0.0.1:9/mcp")]
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "time__get_current_time" in tools and not any(t.startswith("gone__") for t in tools)
        async with gw.http() as http:
            ready = (await http.get("/readyz")).json()
        assert ready["upstreams"] == {"time": "up", "gone": "down"}
