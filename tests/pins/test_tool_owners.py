"""Tool owners, GitOps style: a manifest validated in its owner's CI, and its owner in the audit and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import yaml

from gateway import cli
from tests.support.harness import free_port, http_manifest, running_gateway, time_manifest, write_config

pytestmark = pytest.mark.anyio


async def _validate(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real command in a directory with no gateway.yaml, as a tool owner's CI runs it."""
    return await anyio.run_process(
        [sys.executable, "-m", "gateway", "manifests", "validate", *args],
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def _file(directory: Path, manifest: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{manifest['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


async def test_a_single_manifest_validates_outside_any_gateway_with_json_per_file(tmp_path):
    repo = tmp_path / "tool-repo"
    good = _file(repo, time_manifest())
    bad = _file(repo / "other", {**time_manifest(name="clock"), "colour": "red"})
    misnamed = _file(repo / "third", time_manifest(name="when"))
    misnamed.rename(misnamed.with_name("later.yaml"))
    misnamed = misnamed.with_name("later.yaml")

    ok = await _validate(repo, str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().splitlines()[0] == "ok: time.yaml"
    assert "skipped: time.yaml: upstream_hosts" in ok.stdout.decode() and "--config" in ok.stdout.decode()

    result = await _validate(repo, str(good), str(bad), str(misnamed), "--format", "json")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "mcp-gateway: error: 2 of 3 manifest(s) invalid"
    objects = json.loads(result.stdout)
    assert [o["file"] for o in objects] == [str(good), str(bad), str(misnamed)]
    assert [o["ok"] for o in objects] == [True, False, False]
    assert objects[1]["errors"] == [{"field": "colour", "reason": "unknown field"}]
    assert objects[2]["errors"] == [{"field": "name", "reason": "'when' must match the file name 'later'"}]
    assert objects[0]["warnings"] == [] and objects[0]["skipped"]

    usage = await _validate(repo, str(repo / "nope.yaml"))
    assert usage.returncode == 2 and b"nope.yaml: no such file or directory" in usage.stderr
    assert (await _validate(repo, "--format", "xml", str(good))).returncode == 2


async def test_with_a_gateway_yaml_validate_also_checks_upstream_hosts_and_the_served_tools(tmp_path):
    config = write_config(tmp_path / "gw", free_port(), manifests=[])
    repo = tmp_path / "tool-repo"
    remote = _file(repo, http_manifest("remote", "https://tools.example.org/mcp"))
    pinned = _file(repo, time_manifest(pins={"get_current_time": "sha256:" + "0" * 64}))

    without = await _validate(repo, str(remote), "--format", "json")
    assert without.returncode == 0 and json.loads(without.stdout)[0]["skipped"]

    checked = await _validate(repo, str(remote), str(pinned), "--config", str(config), "--format", "json")
    assert checked.returncode == 1
    remote_result, time_result = json.loads(checked.stdout)
    assert remote_result["errors"] == [
        {"field": "url", "reason": "host 'tools.example.org' is not in upstream_hosts of gateway.yaml"}
    ]
    assert time_result["ok"] and time_result["skipped"] == []
    assert {
        "tool": "time.get_current_time",
        "reason": "the served definition does not match its pin (the gateway hides it)",
    } in time_result["warnings"]


AGENTS = {"bot": {"owner": "o@example.com", "grant": {"tools": ["time.*"]}}}


async def test_the_manifest_owner_is_in_tool_audit_records_and_in_the_report_by_server(tmp_path, capsys):
    manifest = time_manifest(owner="clock-team@example.com", pins={"convert_time": "sha256:" + "0" * 64})
    async with running_gateway(tmp_path, manifests=[manifest], agents=AGENTS) as gw:
        (changed,) = gw.audit("tool.changed")  # the wrong pin quarantines convert_time at startup
        assert (changed["tool"], changed["server_owner"]) == ("convert_time", "clock-team@example.com")
        token = await gw.open_session("bot")
        async with gw.client(token) as client:
            await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        calls, results = gw.audit("tool.call"), gw.audit("tool.result")
        assert [r["server_owner"] for r in calls] == ["clock-team@example.com"]
        assert [r["server_owner"] for r in results] == ["clock-team@example.com"]
        config = str(gw.root / "gateway.yaml")

    capsys.readouterr()
    assert (
        await anyio.to_thread.run_sync(cli.main, ["report", "--by", "server", "--format", "json", "--config", config])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["server"] == "time" and rows[0]["server_owner"] == "clock-team@example.com"
    assert await anyio.to_thread.run_sync(cli.main, ["report", "--by", "server", "--config", config]) == 0
    assert "time (clock-team@example.com)" in capsys.readouterr().out
    assert (
        await anyio.to_thread.run_sync(cli.main, ["report", "--by", "server", "--format", "csv", "--config", config])
        == 0
    )
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert header.startswith("server,server_owner,calls") and first.startswith("time,clock-team@example.com,1")
