"""The CLI finds its config without --config, and its common commands start without the MCP SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support.harness import time_manifest, write_config


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_without_config_the_cli_reads_gateway_config_from_the_environment(tmp_path: Path) -> None:
    write_config(tmp_path, 8765, manifests=[time_manifest()])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = _run("sessions", "list", cwd=elsewhere, env={"GATEWAY_CONFIG": str(tmp_path / "gateway.yaml")})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("SESSION")


def test_without_config_or_environment_the_cli_reads_gateway_yaml_here(tmp_path: Path) -> None:
    write_config(tmp_path, 8765, manifests=[time_manifest()])
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "sessions", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr


def test_a_missing_config_names_all_three_places_the_cli_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert main(["sessions", "list"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "mcp-gateway: error: gateway.yaml: no such file (the config is --config PATH, else "
        "$GATEWAY_CONFIG, else ./gateway.yaml)\n"
    )


@pytest.mark.parametrize("argv", [["--help"], ["sessions", "list"], ["agents", "list"]])
def test_help_and_listing_commands_do_not_import_the_mcp_sdk(tmp_path: Path, argv: list[str]) -> None:
    """What keeps the CLI quick: the SDK costs most of a second of CPU to import on this class of machine."""
    write_config(tmp_path, 8765, manifests=[time_manifest()])
    probe = (
        "import sys\n"
        "from gateway.cli import main\n"
        "try:\n"
        f"    main({argv!r} + ([] if {argv!r} == ['--help'] else ['--config', 'gateway.yaml']))\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'mcp_types'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
