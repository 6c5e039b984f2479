"""Upstream connections: real servers crash, hang, and run over HTTP; the gateway copes and cleans up."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import anyio
import psutil
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import (
    dynamic_manifest,
    everything_http,
    everything_stdio_manifest,
    http_manifest,
    running_gateway,
    time_manifest,
)

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "o@example.com", "grant": {"tools": ["*.*"], "resources": ["*"], "prompts": ["*"]}}}


def children_running(script: str) -> list[psutil.Process]:
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE and script in " ".join(p.cmdline())
        except psutil.NoSuchProcess:  # it exited between the listing and this look: not running
            return False

    return [p for p in psutil.Process().children(recursive=True) if running(p)]


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
                with anyio.fail_after(10):  # until the call is forwarded (wait_all_tasks_blocked can starve here)
                    while not [r for r in gw.audit("tool.call") if r["session"] == sid]:
                        await anyio.sleep(0.05)
                victim.kill()
            assert result is not None and result.is_error
            assert result.content[0].text == "The tool server 'dynamic' is unavailable; the call was not completed."
            outcome = [r for r in gw.audit("tool.result") if r["session"] == sid][-1]
            assert outcome["outcome"] == "error" and outcome["tool"] == "slow"
            assert "closed the connection" in outcome["error"]  # the detail is the operator's

            again = await client.call_tool("dynamic__count", {})  # waits for the restarted server
            assert not again.is_error and again.structured_content == {"result": 0}
        (restarted,) = children_running("dynamic.py")
        assert restarted.pid != victim.pid
        assert gw.gateway.upstreams["dynamic"].main.restarts == 1


async def test_a_down_server_tells_the_agent_it_is_unavailable_and_only_the_audit_and_log_get_the_detail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "srv"
    async with running_gateway(
        tmp_path, manifests=[dynamic_manifest(cwd=str(home), timeout="2s")], agents=AGENTS
    ) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            assert not (await client.call_tool("dynamic__count", {})).is_error
            (child,) = children_running("dynamic.py")
            home.rmdir()
            home.write_text("not a directory any more")  # every restart now fails, naming this host's path
            with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
                child.kill()
                connection = gw.gateway.upstreams["dynamic"].main
                with anyio.fail_after(10):  # until its restart has failed (wait_all_tasks_blocked can starve here)
                    while connection.up or str(home) not in (connection.last_error or ""):
                        await anyio.sleep(0.05)
                result = await client.call_tool("dynamic__count", {})
    said = result.content[0].text
    assert result.is_error and said == "The tool server 'dynamic' is unavailable; the call was not completed."
    assert str(tmp_path) not in said and "Error" not in said
    record = gw.audit("tool.result")[-1]
    assert record["outcome"] == "error" and str(home) in record["error"]
    assert any(str(home) in entry.getMessage() for entry in caplog.records)


async def test_a_down_server_refuses_a_prompt_in_the_same_plain_words(tmp_path: Path) -> None:
    home = tmp_path / "srv"
    async with running_gateway(
        tmp_path, manifests=[everything_stdio_manifest(cwd=str(home), timeout="2s")], agents=AGENTS
    ) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            assert (await client.get_prompt("everything__simple-prompt", {})).messages
            (child,) = children_running("index.js")
            home.rmdir()
            home.write_text("not a directory any more")
            child.kill()
            connection = gw.gateway.upstreams["everything"].main
            with anyio.fail_after(10):  # until its restart has failed (wait_all_tasks_blocked can starve here)
                while connection.up or str(home) not in (connection.last_error or ""):
                    await anyio.sleep(0.05)
            with pytest.raises(MCPError) as refused:
                await client.get_prompt("everything__simple-prompt", {})
    assert refused.value.error.message == "The tool server 'everything' is unavailable; the call was not completed."


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
        own = tmp_path / ".work" / "dynamic"  # outside the state dir: work_dir/<server>
        assert Path(child.cwd()) == own
    assert env is not None
    assert env["GREETING"] == "hello"
    assert env["HOME"] == str(own) and env["TMPDIR"] == str(own / "tmp")
    assert "GATEWAY_ADMIN_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "GREETING", "LC_CTYPE", "TMPDIR"}


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


async def test_readyz_reports_a_stopped_upstream_as_unresponsive_and_up_again_once_it_continues(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        (child,) = children_running("mcp_server_time")
        child.send_signal(signal.SIGSTOP)  # alive, pipes open, answering nothing: what a hang looks like
        try:
            async with gw.http() as http:
                with anyio.fail_after(10):
                    ready = (await http.get("/readyz")).json()
                assert ready["upstreams"] == {"time": "unresponsive"}
        finally:
            child.send_signal(signal.SIGCONT)
        async with gw.http() as http:
            assert (await http.get("/readyz")).json()["upstreams"] == {"time": "up"}
