"""`mcp-gateway sessions ...` against a running gateway: the token it prints works; closing it ends it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.cli import main
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


async def test_a_session_opened_on_the_command_line_works_until_it_is_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        config = str(tmp_path / "gateway.yaml")
        status, out, _ = await anyio.to_thread.run_sync(
            lambda: cli(capsys, "sessions", "open", "--config", config, "--agent", "alice-bot", "--task", "cli")
        )
        assert status == 0
        token = out.strip()
        sid = gw.gateway.tokens.verify(token).sid
        async with gw.client(token) as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error

        status, out, _ = await anyio.to_thread.run_sync(lambda: cli(capsys, "sessions", "list", "--config", config))
        assert sid in out and "active" in out

        status, out, _ = await anyio.to_thread.run_sync(
            lambda: cli(capsys, "sessions", "close", sid, "--config", config)
        )
        assert status == 0
        async with gw.http() as http:
            response = await http.post("/mcp", headers={"authorization": f"Bearer {token}"}, json={})
        assert response.status_code == 401

        status, _, err = await anyio.to_thread.run_sync(
            lambda: cli(capsys, "sessions", "close", sid, "--config", config)
        )
        assert status == 1 and err.strip() == f"mcp-gateway: error: session {sid} is already closed"
        cli_chain = tmp_path / "state" / "audit-cli.jsonl"
        assert '"event":"session.closed"' in cli_chain.read_text()


def test_opening_a_session_for_an_unknown_agent_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.harness import write_config

    write_config(tmp_path, 8765, manifests=[time_manifest()])
    status, _, err = cli(capsys, "sessions", "open", "--config", str(tmp_path / "gateway.yaml"), "--agent", "ghost")
    assert status == 1
    assert err == "mcp-gateway: error: agent 'ghost' is unknown or disabled\n"
