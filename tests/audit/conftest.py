"""A configured audit stream written by the real sink: rotated files, checkpoints in the file and the store."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.app import Gateway, build_gateway
from gateway.audit.files import cli_path, stream_files
from gateway.audit.metrics import WRITES
from gateway.audit.verify import verify
from gateway.cli import main
from gateway.config.files import load_gateway_config
from tests.support.harness import write_config

AGENTS = ["alice-bot", "bob-bot"]


@dataclass
class Stream:
    config: Path
    path: Path  # the active file

    @property
    def files(self) -> list[Path]:
        return stream_files(self.path)

    @property
    def cli(self) -> Path:
        return cli_path(self.path)

    def records(self, path: Path | None = None) -> list[dict[str, Any]]:
        paths = [path] if path else self.files
        return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def broken_links(gateway: Gateway) -> list[str | None]:
    """Verify the gateway's stream with its own keys: the first broken link of each chain (None: intact)."""
    keys = gateway.keys
    chains = verify(
        stream_files(gateway.config.audit.path), lambda kid: key.public if (key := keys.verify_key(kid)) else None
    )
    return [chain.broken for chain in chains]


def fsync_count() -> float:
    return next((float(line.split()[-1]) for line in WRITES.render() if "_count" in line), 0.0)  # none yet: 0


def gateway_for(config: Path, clock: Callable[[], float] = time.time) -> Gateway:
    return build_gateway(load_gateway_config(config), manifests={}, clock=clock)


@contextlib.asynccontextmanager
async def audit_running(config: Path, clock: Callable[[], float] = time.time) -> AsyncIterator[Gateway]:
    """A gateway without upstreams whose store, keys and audit sink are open: what writing records needs."""
    gateway = gateway_for(config, clock)
    await gateway.store.open()
    gateway.keys.load()
    try:
        async with gateway.audit.run():
            yield gateway
    finally:
        await gateway.store.close()


async def write_calls(gateway: Gateway, calls: int, first: int = 0) -> None:
    """Calls as the pipeline records them: a durable tool.call, then its tool.result."""
    for i in range(first, first + calls):
        agent = AGENTS[i % 2]
        call = {
            "agent": agent,
            "session": f"s-{agent}-{i % 3}",
            "server": "time",
            "tool": "get_current_time",
            "call_id": f"c{i}",
        }
        await gateway.audit.emit("tool.call", durable=True, decision="allow", request_tokens=3, **call)
        await gateway.audit.emit(
            "tool.result", outcome="ok", request_tokens=3, response_tokens=40, latency_ms=1.5, **call
        )


async def write_stream(root: Path, *, calls: int = 40, audit: dict[str, Any] | None = None) -> Stream:
    """A gateway's stream (several rotated files, checkpoints every 7 records) plus one operator command."""
    settings = {
        "path": "./state/audit.jsonl",
        "fsync": "always",
        "rotate_bytes": 4000,
        "checkpoint_every": 7,
        **(audit or {}),
    }
    config = write_config(root, 8765, manifests=[], agents={}, extra={"audit": settings})
    async with audit_running(config) as gateway:
        await gateway.audit.emit("gateway.started")
        await write_calls(gateway, calls)
        await gateway.audit.emit("gateway.stopped")
    argv = ["agents", "create", "carol-bot", "--owner", "carol@example.com", "--config", str(config)]
    assert await anyio.to_thread.run_sync(main, argv) == 0
    return Stream(config, load_gateway_config(config).audit.path)


def make_stream(root: Path, **kwargs: Any) -> Stream:
    return anyio.run(lambda: write_stream(root, **kwargs))


@pytest.fixture
def stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Stream:
    made = make_stream(tmp_path)
    capsys.readouterr()
    return made


def verify_cli(stream: Stream, capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["audit", "verify", "--config", str(stream.config), *map(str, paths)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
