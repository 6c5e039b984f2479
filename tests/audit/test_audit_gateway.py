"""The audit stream through the real gateway: fail closed, one record pair per call under load, masked arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.audit.chain import record_hash
from tests.audit.conftest import broken_links, fsync_count
from tests.support.harness import everything_stdio_manifest, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


def git_repo(root: Path) -> Path:
    repo = root / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        check=True,
    )
    return repo


def git_manifest(repo: Path) -> dict[str, Any]:
    return {
        "name": "git",
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "mcp_server_git", "--repository", str(repo)],
        "tools": "*",
        "sandbox": {"write": [str(repo)]},
    }


def branches(repo: Path) -> set[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "branch", "--format=%(refname:short)"], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def _replace_with_directory(path: Path) -> Callable[[], None]:
    path.rename(path.with_name("moved.jsonl"))
    path.mkdir()

    def restore() -> None:
        path.rmdir()
        path.with_name("moved.jsonl").rename(path)

    return restore


def _point_at_a_full_disk(path: Path) -> Callable[[], None]:
    """/dev/full fails every write with ENOSPC, for root too."""
    path.rename(path.with_name("kept.jsonl"))
    path.symlink_to("/dev/full")

    def restore() -> None:
        os.replace(path.with_name("kept.jsonl"), path)

    return restore


@pytest.mark.parametrize("break_sink", [_replace_with_directory, _point_at_a_full_disk])
async def test_no_call_reaches_the_upstream_while_the_audit_sink_cannot_write(
    tmp_path: Path, break_sink: Callable[[Path], Callable[[], None]]
):
    repo = git_repo(tmp_path)
    agents = {"alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["git.git_create_branch"]}}}
    async with running_gateway(tmp_path, manifests=[git_manifest(repo)], agents=agents) as gw:
        token = await gw.open_session("alice-bot")
        path = gw.gateway.config.audit.path

        async def create(client: Any, branch: str) -> Any:
            return await client.call_tool("git__git_create_branch", {"repo_path": str(repo), "branch_name": branch})

        async with (
            gw.client(token, mode="legacy") as legacy,
            gw.client(token, mode="auto") as modern,
            gw.http() as http,
        ):
            assert not (await create(legacy, "before")).is_error
            assert (await http.get("/readyz")).status_code == 200

            restore = break_sink(path)
            with pytest.raises(MCPError, match="nothing was forwarded: audit sink cannot write"):
                await create(legacy, "refused-first")
            for i, client in enumerate([legacy, modern, legacy, modern]):
                with pytest.raises(MCPError):
                    await create(client, f"refused-{i}")
            raw = await http.post(
                "/mcp",
                headers={"authorization": f"Bearer {token}", "accept": "application/json"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            )
            assert raw.status_code == 503 and "audit sink cannot write" in raw.json()["error_description"]
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and "audit" in ready.json()["problems"]
            assert branches(repo) == {"master", "before"}, "a call reached the upstream unaudited"

            restore()
            assert (await http.get("/readyz")).status_code == 200
            assert not (await create(legacy, "after-legacy")).is_error
            assert not (await create(modern, "after-modern")).is_error

        assert branches(repo) == {"master", "before", "after-legacy", "after-modern"}
        calls = gw.audit("tool.call")
        assert len(calls) == len(gw.audit("tool.result")) == 3 and {c["decision"] for c in calls} == {"allow"}
        assert gw.audit("audit.recovered")[0]["refused"] == 6  # the durable write, four calls, one tools/list
    assert broken_links(gw.gateway) == [None]


async def test_eight_clients_making_200_calls_each_leave_one_record_pair_per_call_and_an_intact_chain(tmp_path: Path):
    clients, calls = 8, 200
    fsyncs_before = fsync_count()
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        tokens = [await gw.open_session("alice-bot", task=f"load-{i}") for i in range(clients)]

        async def client(token: str) -> None:
            async with gw.client(token) as session:
                for _ in range(calls):
                    result = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
                    assert not result.is_error

        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for token in tokens:
                    tg.start_soon(client, token)
    lines = gw.gateway.config.audit.path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line is one whole record: none torn or interleaved
    assert all(record_hash(r) == r["hash"] for r in records)
    by_event = Counter((r["event"], r.get("call_id")) for r in records if r["event"] in ("tool.call", "tool.result"))
    call_ids = {call_id for _, call_id in by_event}
    assert len(call_ids) == clients * calls
    assert all(by_event[("tool.call", c)] == 1 and by_event[("tool.result", c)] == 1 for c in call_ids)
    assert Counter(r["session"] for r in records if r["event"] == "tool.result") == Counter(
        {r["session"]: calls for r in records if r["event"] == "session.opened"}
    )
    assert broken_links(gw.gateway) == [None]
    # At most one fsync per durable tool.call: the records that need not wait ride along with them.
    assert fsync_count() - fsyncs_before <= clients * calls * 1.25


async def test_arguments_are_logged_masked_only_for_servers_that_opt_in(tmp_path: Path):
    agents = {"alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["everything.echo", "time.*"]}}}
    manifests = [everything_stdio_manifest(log_arguments=True), time_manifest()]
    secret = "ghp_" + "Ab1" * 12
    async with running_gateway(tmp_path, manifests=manifests, agents=agents) as gw:
        token = await gw.open_session("alice-bot")
        async with gw.client(token) as client:
            message = f"deploy with {secret} and password=hunter2 please"
            assert not (await client.call_tool("everything__echo", {"message": message})).is_error
            assert not (await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})).is_error
        echo, clock = gw.audit("tool.call")
        stream = gw.gateway.config.audit.path.read_text()
    assert echo["arguments_masked"] == {"message": "deploy with [masked] and password=[masked] please"}
    assert "arguments_masked" not in clock and "Europe/Paris" not in stream
    assert secret not in stream and "hunter2" not in stream
    assert echo["arguments"].startswith("hmac-sha256:")  # the fingerprint is always there


async def test_audit_recovered_counts_every_request_refused_during_the_outage(tmp_path: Path):
    """The first refusal fails a durable write; the rest are refused at the edge before any write is tried."""
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        token = await gw.open_session("alice-bot")
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}},
        }
        headers = {
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
        }
        async with gw.client(token) as client, gw.http() as http:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            restore = _point_at_a_full_disk(gw.gateway.config.audit.path)
            with pytest.raises(MCPError, match="nothing was forwarded"):
                await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            statuses = [(await http.post("/mcp", json=call, headers=headers)).status_code for _ in range(25)]
            assert statuses == [503] * 25
            restore()
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        [recovered] = gw.audit("audit.recovered")
    assert recovered["refused"] == 26
