"""examples/quickstart/run.sh as a newcomer runs it: again and again, stopped with Ctrl-C or killed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.support.harness import free_port

REPO = Path(__file__).resolve().parents[1]
READY = "Application startup complete"


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A copy of the repository's quickstart on a free port, with the time server only (fast to start)."""
    here = tmp_path / "examples" / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart", here, ignore=shutil.ignore_patterns(".state", "secrets"))
    (tmp_path / "tool_manifests").mkdir()
    shutil.copy(REPO / "tool_manifests" / "time.yaml", tmp_path / "tool_manifests")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "node_modules").symlink_to(REPO / "node_modules")  # the demo IdP's oidc-provider
    config = yaml.safe_load((here / "gateway.yaml").read_text())
    port, idp = free_port(), f"http://127.0.0.1:{free_port()}"
    config["public_url"] = f"http://127.0.0.1:{port}"
    config["listen"]["port"] = port
    config["login"]["identity_provider"] = idp
    config["identity_providers"][0].update(issuer=idp, jwks_url=f"{idp}/jwks")
    (here / "gateway.yaml").write_text(yaml.safe_dump(config))
    return here


class _Run:
    """One run.sh process; its output lines arrive on a queue as they are written."""

    def __init__(self, here: Path) -> None:
        self.process = subprocess.Popen(
            ["bash", str(here / "run.sh")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> list[str]:
        seen: list[str] = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"run.sh ended before {text!r}:\n{''.join(seen)}")
            seen.append(line)
            if text in line:
                return seen


def _active_quickstart_sessions(here: Path) -> list[str]:
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "sessions",
            "list",
            "--config",
            str(here / "gateway.yaml"),
            "--agent",
            "research-bot",
            "--state",
            "active",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [s["sid"] for s in json.loads(listed.stdout) if s["task"] == "quickstart"]


def test_the_quickstart_starts_six_times_in_a_row_and_never_leaks_its_session(quickstart: Path) -> None:
    for _ in range(6):  # research-bot may hold five active sessions: a leak would fail the sixth start
        run = _Run(quickstart)
        banner = run.wait_for(READY)
        assert any("Authorization     Bearer ey" in line for line in banner)
        assert any("sign in as alice@example.com" in line for line in banner)
        assert len(_active_quickstart_sessions(quickstart)) == 1
        run.process.send_signal(signal.SIGINT)  # Ctrl-C reaches the script
        assert run.process.wait(timeout=60) == 130
        assert _active_quickstart_sessions(quickstart) == []


def test_a_killed_quickstart_leaves_a_session_the_next_start_closes(quickstart: Path) -> None:
    killed = _Run(quickstart)
    killed.wait_for(READY)
    (orphan,) = _active_quickstart_sessions(quickstart)
    os.killpg(killed.process.pid, signal.SIGKILL)  # no trap runs: the session stays active
    killed.process.wait(timeout=60)
    assert _active_quickstart_sessions(quickstart) == [orphan]

    run = _Run(quickstart)
    run.wait_for(READY)
    (current,) = _active_quickstart_sessions(quickstart)
    assert current != orphan
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=60) == 143
    assert _active_quickstart_sessions(quickstart) == []
