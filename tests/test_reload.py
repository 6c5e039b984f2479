"""Hot reload: manifests, agents.yaml and gateway.yaml change under a running gateway, validated first."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import httpx
import psutil
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from gateway.config.files import GatewayConfig
from gateway.config.reload import NOT_RELOADABLE, RELOADABLE
from gateway.errors import UpstreamError
from tests.identity.support import client_credentials, give_secret
from tests.support.harness import (
    STARTUP_TIMEOUT,
    Harness,
    dynamic_manifest,
    free_port,
    running_gateway,
    time_manifest,
    write_config,
)
from tests.test_upstream import children_running

pytestmark = pytest.mark.anyio

AGENTS = {
    "bot": {"owner": "o@example.com", "grant": {"tools": ["*.*"]}},
    "other-bot": {"owner": "p@example.com", "grant": {"tools": ["time.*"]}},
}


async def _audited(read: Any, event: str, count: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
    """Wait for the `count`-th `event` record; returns them all."""
    with anyio.fail_after(timeout):
        while len(records := read(event)) < count:
            await anyio.sleep(0.05)
    return records


def _write_manifest(gw: Harness, manifest: dict[str, Any]) -> None:
    path = gw.root / "manifests" / f"{manifest['name']}.yaml"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(manifest))
    temporary.rename(path)


async def _tools(gw: Harness, token: str, url: str | None = None) -> list[str]:
    async with gw.client(token, url=url) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


def test_every_gateway_yaml_setting_is_either_reloadable_or_refused():
    assert RELOADABLE | NOT_RELOADABLE == set(GatewayConfig.model_fields)
    assert not RELOADABLE & NOT_RELOADABLE
    assert {"listen", "store", "state_dir", "public_url", "signing_key"} <= NOT_RELOADABLE


async def test_a_manifest_added_changed_and_removed_while_an_agent_is_connected(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            assert [t.name for t in (await client.list_tools()).tools if t.name.startswith("dynamic")] == []

            _write_manifest(gw, dynamic_manifest())  # added: the file alone triggers the reload
            (reloaded,) = await _audited(gw.audit, "config.reloaded")
            assert reloaded["servers_added"] == ["dynamic"] and reloaded["trigger"] == "files changed"
            assert len(reloaded["files"][str(gw.root / "manifests" / "dynamic.yaml")]) == 64
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"dynamic__count", "dynamic__slow", "time__get_current_time"} <= names
            assert (await client.call_tool("dynamic__count", {})).structured_content == {"result": 0}
            assert "slow" in await _tools(gw, token, gw.server_url("dynamic"))  # its own endpoint appeared
            (first,) = children_running("dynamic.py")

            _write_manifest(gw, dynamic_manifest(tools=["count", "slow"]))  # changed: restarted
            await _audited(gw.audit, "config.reloaded", 2)
            assert gw.audit("config.reloaded")[1]["servers_restarted"] == ["dynamic"]
            names = {t.name for t in (await client.list_tools()).tools}
            assert {n for n in names if n.startswith("dynamic")} == {"dynamic__count", "dynamic__slow"}
            assert (await client.call_tool("dynamic__count", {})).structured_content == {"result": 0}  # new process
            with anyio.fail_after(15):
                while first.is_running() and first.status() != psutil.STATUS_ZOMBIE:
                    await anyio.sleep(0.05)
            (second,) = children_running("dynamic.py")

            result: Any = None

            async def slow_call() -> None:
                nonlocal result
                result = await client.call_tool("dynamic__slow", {"seconds": 3})

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                await _audited(lambda e: [r for r in gw.audit(e) if r["tool"] == "slow"], "tool.call")
                (gw.root / "manifests" / "dynamic.yaml").unlink()  # removed while the call is in flight
                await _audited(gw.audit, "config.reloaded", 3)
                assert gw.audit("config.reloaded")[2]["servers_removed"] == ["dynamic"]
                names = {t.name for t in (await client.list_tools()).tools}
                assert not {n for n in names if n.startswith("dynamic")}  # gone from lists at once
            assert result is not None and not result.is_error and result.content[0].text == "done"  # not lost

            with anyio.fail_after(15):
                while second.is_running() and second.status() != psutil.STATUS_ZOMBIE:
                    await anyio.sleep(0.05)
            assert children_running("dynamic.py") == []
            with pytest.raises(MCPError, match="Unknown tool: dynamic__count"):
                await client.call_tool("dynamic__count", {})
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        async with gw.http() as http:
            gone = await http.post("/servers/dynamic/mcp", json={}, headers={"Authorization": f"Bearer {token}"})
        assert gone.status_code == 404


async def test_a_broken_agents_yaml_edit_is_rejected_and_the_old_grants_keep_working(tmp_path, caplog):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("other-bot")
        async with gw.client(token) as client:
            broken = {"agents": {**AGENTS, "other-bot": {"owner": "p@example.com", "grnat": {"tools": []}}}}
            with caplog.at_level(logging.ERROR, logger="gateway.reload"):
                (gw.root / "agents.yaml").write_text(yaml.safe_dump(broken))
                (rejected,) = await _audited(gw.audit, "config.rejected")
            agents_file = str(gw.root / "agents.yaml")
            assert rejected["reason"] == f"{agents_file}: agents.other-bot.grnat: unknown field"
            assert rejected["file"] == agents_file
            lines = [r.getMessage() for r in caplog.records if r.name == "gateway.reload"]
            assert len(lines) == 1 and "agents.other-bot.grnat: unknown field" in lines[0]
            assert not (
                await client.call_tool(
                    "time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"}
                )
            ).is_error
            assert gw.audit("config.reloaded") == []

            narrowed = {
                "agents": {
                    **AGENTS,
                    "other-bot": {"owner": "p@example.com", "grant": {"tools": ["time.get_current_time"]}},
                }
            }
            (gw.root / "agents.yaml").write_text(yaml.safe_dump(narrowed))
            (reloaded,) = await _audited(gw.audit, "config.reloaded")
            assert reloaded["agents_changed"] == ["other-bot"]
            with pytest.raises(MCPError, match="Unknown tool: time__convert_time"):  # the live session, next call
                await client.call_tool(
                    "time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"}
                )


async def test_an_agent_removed_from_agents_yaml_loses_its_live_sessions(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        secret = await give_secret(gw, "other-bot")
        body = await client_credentials(gw, "other-bot", secret)
        (gw.root / "agents.yaml").write_text(yaml.safe_dump({"agents": {"bot": AGENTS["bot"]}}))
        assert await gw.gateway.reloader.reload("test")  # type: ignore[union-attr]
        closed = [r for r in gw.audit("session.closed") if r["session"] == body["session_id"]]
        assert closed and closed[0]["state"] == "revoked" and closed[0]["actor"] == "config"
        assert gw.audit("config.reloaded")[-1]["agents_removed"] == ["other-bot"]
        async with gw.http() as http:
            refused = await http.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, auth=("other-bot", secret)
            )
        assert refused.status_code == 401


async def test_a_change_of_listen_is_refused_naming_the_field_and_the_gateway_keeps_serving(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        path = gw.root / "gateway.yaml"
        config = yaml.safe_load(path.read_text())
        path.write_text(
            yaml.safe_dump(
                {
                    **config,
                    "listen": {"host": "127.0.0.1", "port": gw.port + 1},
                    "admin_token": "a-new-admin-token-0123456789",
                }
            )
        )
        (rejected,) = await _audited(gw.audit, "config.rejected")
        assert rejected["reason"] == f"{path}: listen: not reloadable; restart the gateway to change it"
        assert gw.gateway.config.admin_token is None  # nothing of the refused file applied

        path.write_text(yaml.safe_dump({**config, "admin_token": "a-new-admin-token-0123456789"}))
        await _audited(gw.audit, "config.reloaded")
        async with gw.http() as http:  # a reloadable setting takes effect
            listed = await http.get("/admin/agents", headers={"Authorization": "Bearer a-new-admin-token-0123456789"})
        assert listed.status_code == 200
        token = await gw.open_session("bot")
        assert "time__get_current_time" in await _tools(gw, token)


async def test_sighup_makes_a_gateway_process_reload(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port, manifests=[time_manifest()], agents=AGENTS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    audit_path = tmp_path / "state" / "audit.jsonl"

    def audit(event: str) -> list[dict[str, Any]]:
        if not audit_path.exists():
            return []
        return [r for line in audit_path.read_text().splitlines() if (r := json.loads(line))["event"] == event]

    try:
        await _audited(audit, "gateway.started", timeout=STARTUP_TIMEOUT)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with anyio.fail_after(STARTUP_TIMEOUT):
                while True:
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
        process.send_signal(signal.SIGHUP)
        (reloaded,) = await _audited(audit, "config.reloaded")
        assert reloaded["trigger"] == "SIGHUP" and process.returncode is None
        assert str(config) in reloaded["files"]
    finally:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


RESTART_ONLY: dict[str, Any] = {
    "public_url": "http://127.0.0.1:1",
    "listen": {"host": "127.0.0.1", "port": 1},
    "instance": "another-instance",
    "state_dir": "./state2",
    "signing_key": "./state/other.pem",
    "secrets_dir": "./secrets2",
    "store": "sqlite:///state/other.db",
    "audit": {"path": "./state/other.jsonl"},
    "manifests": "./manifests2",
    "agents": "./agents2.yaml",
    "session_defaults": {"ttl": "2h"},
    "identity_providers": [
        {"issuer": "https://idp.example.com", "jwks_url": "https://idp.example.com/jwks", "audience": "gw"}
    ],
    "oauth_rate_limit": {"per_client": 5},
    "shared_credentials": {"max_fingerprints": 2},
    "allowed_origins": ["http://127.0.0.1:9"],
    "allowed_hosts": ["gateway.example:1"],
    "metering": {"tokenizer": "bpe"},
    "limits": {"mcp_sessions_per_session": 3},
    "http": {"max_connections": 10},
    "work_dir": "./work2",
    "workload_issuers": [
        {"issuer": "https://k8s.example.com", "jwks_url": "https://k8s.example.com/jwks", "audience": "gw"}
    ],
    "dpop": "required",
    "dpop_nonce": True,
    "telemetry": {"otlp_endpoint": "http://127.0.0.1:4318"},
    "login": {"identity_provider": "https://idp.example.com"},
    "clients": {"dynamic_registration": True},
}


async def test_each_setting_that_needs_a_restart_is_refused_by_name_and_nothing_else_applies(tmp_path):
    assert set(RESTART_ONLY) == NOT_RELOADABLE
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        path = gw.root / "gateway.yaml"
        original = yaml.safe_load(path.read_text())
        reloader = gw.gateway.reloader
        assert reloader is not None
        for name, value in sorted(RESTART_ONLY.items()):
            path.write_text(yaml.safe_dump({**original, name: value, "metrics_public": True}))
            assert not await reloader.reload("test")
            reason = gw.audit("config.rejected")[-1]["reason"]
            assert reason == f"{path}: {name}: not reloadable; restart the gateway to change it"
            assert gw.gateway.config.metrics_public is False
        assert gw.audit("config.reloaded") == []


async def test_a_broken_manifest_edit_keeps_the_running_server(tmp_path, caplog):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        (child,) = children_running("mcp_server_time")
        manifest = gw.root / "manifests" / "time.yaml"
        with caplog.at_level(logging.WARNING, logger="gateway"):
            manifest.write_text(yaml.safe_dump({**time_manifest(), "transport": "carrier-pigeon"}))
            (rejected,) = await _audited(gw.audit, "config.rejected")
            await gw.gateway.upstreams["time"].requarantine()  # the pin check reads the bad file too
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and str(manifest) in lines[0] and "transport" in lines[0]
        assert rejected["file"] == str(manifest) and rejected["reason"].startswith(f"{manifest}: transport: ")
        assert "time__get_current_time" in await _tools(gw, token)
        assert children_running("mcp_server_time") == [child]  # not restarted


async def test_turning_on_require_pins_hides_unpinned_tools_from_live_sessions_at_once(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        assert "time__get_current_time" in await _tools(gw, token)
        path = gw.root / "gateway.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "require_pins": True}))
        assert await gw.gateway.reloader.reload("test")  # type: ignore[union-attr]
        assert await _tools(gw, token) == []


async def test_removing_a_per_session_server_stops_every_session_child_and_starts_no_new_one(tmp_path):
    manifest = dynamic_manifest(isolation="per_session")
    async with running_gateway(tmp_path, manifests=[manifest], agents=AGENTS) as gw:
        token_a, token_b = await gw.open_session("bot"), await gw.open_session("bot")
        for token in (token_a, token_b):
            async with gw.client(token) as client:
                assert not (await client.call_tool("dynamic__count", {})).is_error
        assert len(children_running("dynamic.py")) == 3  # the catalog's own connection and one per session
        removed = gw.gateway.upstreams["dynamic"]
        (gw.root / "manifests" / "dynamic.yaml").unlink()
        assert await gw.gateway.reloader.reload("test")  # type: ignore[union-attr]
        with anyio.fail_after(15):
            while children_running("dynamic.py"):
                await anyio.sleep(0.05)
        with pytest.raises(UpstreamError, match="removed or restarted by a configuration reload"):
            removed.connection_for(gw.gateway.tokens.verify(token_a).sid)
        assert children_running("dynamic.py") == []
