"""`mcp-gateway audit tail`: filters select exactly the matching records; --follow survives rotation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from gateway.audit import tail
from gateway.audit.tail import Follower, readable
from gateway.cli import main
from tests.audit.conftest import Stream, audit_running, write_calls, write_stream


def _tail(stream: Stream, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["audit", "tail", "--config", str(stream.config), *args]) == 0
    return capsys.readouterr().out.splitlines()


def _everything(stream: Stream) -> list[dict[str, Any]]:
    return sorted(stream.records() + stream.records(stream.cli), key=lambda r: r["ts"])


def _ids(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["gateway"], r["seq"]) for r in records]


def test_filters_select_exactly_the_matching_records(stream: Stream, capsys: pytest.CaptureFixture[str]):
    everything = _everything(stream)
    shown = _tail(stream, capsys, "--agent", "alice-bot", "--event", "tool.call", "--json", "-n", "1000")
    expected = [r for r in everything if r.get("agent") == "alice-bot" and r["event"] == "tool.call"]
    assert _ids([json.loads(line) for line in shown]) == _ids(expected) and len(expected) == 20

    shown = _tail(stream, capsys, "--session", "s-bob-bot-1", "--event", "tool.*", "--json", "-n", "1000")
    expected = [r for r in everything if r.get("session") == "s-bob-bot-1"]
    assert _ids([json.loads(line) for line in shown]) == _ids(expected) and expected

    middle = (everything[30]["ts"] + everything[31]["ts"]) / 2
    since = datetime.fromtimestamp(middle, UTC).isoformat()
    shown = _tail(stream, capsys, "--since", since, "--json")
    assert _ids([json.loads(line) for line in shown]) == _ids([r for r in everything if r["ts"] >= middle])


def test_without_filters_it_prints_the_last_records_readably(stream: Stream, capsys: pytest.CaptureFixture[str]):
    shown = _tail(stream, capsys)
    assert len(shown) == 10
    assert shown[-2].split()[1] == "agent.created" and "agent=carol-bot" in shown[-2]
    last_call = next(line for line in reversed(shown) if " tool.result " in line)
    assert "tool=time.get_current_time" in last_call and "outcome=ok" in last_call and "tokens=3/40" in last_call
    assert len(_tail(stream, capsys, "-n", "3")) == 3


async def _lines(process: anyio.abc.Process) -> AsyncIterator[dict[str, Any]]:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)


@pytest.mark.anyio
async def test_following_shows_new_records_across_rotations(tmp_path: Path):
    stream = await write_stream(tmp_path, calls=6, audit={"rotate_bytes": 1500})
    rotated_before = len(stream.files)
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "audit",
        "tail",
        "--follow",
        "--json",
        "--event",
        "tool.*",
        "-n",
        "4",
        "--config",
        str(stream.config),
    ]
    async with await anyio.open_process(argv, stderr=subprocess.DEVNULL) as process:
        try:
            with anyio.fail_after(30):
                lines = _lines(process)
                history = [await anext(lines) for _ in range(4)]
                assert [r["call_id"] for r in history] == ["c4", "c4", "c5", "c5"]

                async with audit_running(stream.config) as gateway:
                    await write_calls(gateway, 30, first=100)  # a burst: files rotate between two polls
                followed = [await anext(lines) for _ in range(60)]
        finally:
            process.terminate()
    assert [(r["event"], r["call_id"]) for r in followed] == [
        (event, f"c{i}") for i in range(100, 130) for event in ("tool.call", "tool.result")
    ]
    assert len(stream.files) >= rotated_before + 5


def test_a_file_rotated_away_while_the_follower_reopens_is_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations close together: the second lands between the follower's listing of the rotated files and its
    opening of the new active file (regression: that file's records were skipped)."""
    active = tmp_path / "audit.jsonl"

    def write(path: Path, *names: str) -> None:
        with path.open("a") as out:
            out.writelines(json.dumps({"event": "tool.call", "call_id": name}) + "\n" for name in names)

    write(active, "a1")
    follower = Follower(active)
    assert [r["call_id"] for r in follower.poll()] == ["a1"]
    write(active, "a2")
    active.rename(tmp_path / "audit.000000000001.jsonl")
    write(active, "b1")
    listing = tail.rotated_files

    def rotating_right_after(path: Path) -> list[Path]:
        files = listing(path)
        monkeypatch.setattr(tail, "rotated_files", listing)  # once
        active.rename(tmp_path / "audit.000000000002.jsonl")
        write(active, "c1")
        return files

    monkeypatch.setattr(tail, "rotated_files", rotating_right_after)
    assert [r["call_id"] for r in follower.poll()] == ["a2", "b1", "c1"]
    write(active, "c2")
    assert [r["call_id"] for r in follower.poll()] == ["c2"]
    follower.close()


def test_control_characters_in_a_value_cannot_reach_the_terminal():
    line = readable({"ts": 0, "event": "tool.result", "agent": "a", "error": "upstream said \x1b[2J\nbye\x9b"})
    assert "error=upstream said \\x1b[2J\\x0abye\\x9b" in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)
