"""The sink on its own: durability, group commit, failing and recovering, rotation, continuity with the store."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gateway.app import Gateway
from gateway.audit.files import stream_files
from gateway.audit.gateway_sink import CHECK_EVERY, GatewaySink
from gateway.audit.verify import verify
from gateway.cli import main
from gateway.errors import AuditUnavailable
from tests.audit.conftest import audit_running, broken_links, fsync_count, gateway_for
from tests.support.harness import Clock, write_config

pytestmark = pytest.mark.anyio


def _config(root: Path, **audit: object) -> Path:
    settings = {"path": "./state/audit.jsonl", "checkpoint_every": 5, **audit}
    return write_config(root, 8765, manifests=[], agents={}, extra={"audit": settings})


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = gateway_for(_config(tmp_path))
    await gw.store.open()
    gw.keys.load()
    yield gw
    await gw.store.close()


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_durable_record_is_on_disk_when_emit_returns(gateway: Gateway):
    async with gateway.audit.run():
        record = await gateway.audit.emit("tool.call", durable=True, call_id="c1")
        assert gateway.audit.commit.synced >= record["seq"]
        assert _records(gateway.audit.path)[-1]["call_id"] == "c1"


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_concurrent_durable_records_share_fsyncs(gateway: Gateway, disk: str, monkeypatch: pytest.MonkeyPatch):
    """A fast disk is fsynced on the event loop, a slow one from a worker thread: either way writers share."""
    if disk == "slow":
        monkeypatch.setattr("gateway.audit.commit.INLINE_FSYNC_MAX", 0.0)
    before = fsync_count()
    async with gateway.audit.run():
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(lambda i=i: gateway.audit.emit("tool.call", durable=True, call_id=f"c{i}"))
        fsyncs = fsync_count() - before
    assert 1 <= fsyncs < 10
    assert sorted(r["call_id"] for r in _records(gateway.audit.path) if r["event"] == "tool.call") == sorted(
        f"c{i}" for i in range(50)
    )


async def test_a_lone_durable_record_is_fsynced_on_the_event_loop_and_one_written_beside_others_in_a_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
):
    """Alone, the fsync on the loop is cheaper than a thread hop; with others writing, a worker thread's fsync
    leaves the loop serving them (their records then share the next fsync)."""
    where: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        where.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    loop = threading.get_ident()
    async with gateway.audit.run():
        await gateway.audit.emit("tool.call", durable=True, call_id="alone")
        assert where == [loop]
        where.clear()
        async with anyio.create_task_group() as tg:  # the second writes while the first yields before its fsync
            tg.start_soon(lambda: gateway.audit.emit("tool.call", durable=True, call_id="beside"))
            tg.start_soon(lambda: gateway.audit.emit("tool.result", call_id="other"))
        assert where and loop not in where
        assert gateway.audit.commit.synced >= max(r["seq"] for r in _records(gateway.audit.path))


async def test_a_file_replaced_by_a_directory_refuses_durable_records_and_recovers(gateway: Gateway):
    path = gateway.audit.path
    async with gateway.audit.run():
        await gateway.audit.emit("tool.call", durable=True, call_id="before")
        path.rename(path.with_suffix(".moved"))
        path.mkdir()
        with pytest.raises(AuditUnavailable, match="moved, deleted or replaced"):
            await gateway.audit.emit("tool.call", durable=True, call_id="refused")
        await gateway.audit.emit("tool.result", call_id="held")  # already happened: kept until the sink is back
        with pytest.raises(AuditUnavailable):
            await gateway.audit.probe()
        assert not gateway.audit.healthy

        path.rmdir()
        path.with_suffix(".moved").rename(path)
        await gateway.audit.probe()
        assert gateway.audit.healthy
        await gateway.audit.emit("tool.call", durable=True, call_id="after")
    events = [(r["event"], r.get("call_id")) for r in _records(path)]
    assert ("tool.call", "refused") not in events
    held, recovered = events.index(("tool.result", "held")), events.index(("audit.recovered", None))
    assert events.index(("tool.call", "before")) < held < recovered < events.index(("tool.call", "after"))
    assert next(r for r in _records(path) if r["event"] == "audit.recovered")["refused"] == 1
    assert broken_links(gateway) == [None]


async def test_a_durable_record_waiting_for_a_slow_fsync_is_refused_when_the_sink_fails_first(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
):
    """Recovery fsyncs only the reopened file: a record written before the failure was never made durable."""
    monkeypatch.setattr("gateway.audit.commit.INLINE_FSYNC_MAX", 0.0)  # a slow disk: waiters wait for the flusher
    monkeypatch.setattr("gateway.audit.gateway_sink.CHECK_EVERY", 0.0)  # the plain record below finds the move
    audit, path = gateway.audit, gateway.audit.path
    outcome: list[str] = []
    done = anyio.Event()

    async def call() -> None:
        try:
            await audit.emit("tool.call", durable=True, call_id="waiting")
            outcome.append("forwarded")
        except AuditUnavailable:
            outcome.append("refused")
        done.set()

    async with audit.run(), anyio.create_task_group() as tg:
        await audit.emit("tool.call", durable=True, call_id="before")
        async with audit.commit.io:  # the flusher cannot fsync until the sink has failed
            tg.start_soon(call)
            with anyio.fail_after(5):
                while not audit.commit.urgent:  # written, and waiting for the flusher's fsync
                    await anyio.lowlevel.checkpoint()
            path.rename(path.with_suffix(".moved"))
            await audit.emit("tool.result", call_id="held")  # finds the file gone: the sink is down
            assert not audit.healthy
            path.with_suffix(".moved").rename(path)
        with anyio.fail_after(5):
            await done.wait()
        await audit.probe()
    assert outcome == ["refused"]
    assert next(r for r in _records(path) if r["event"] == "audit.recovered")["refused"] == 1


async def test_a_full_disk_refuses_durable_records_and_recovers(tmp_path: Path):
    """/dev/full answers every write with ENOSPC, for root too."""
    real = tmp_path / "real.jsonl"
    real.touch()
    link = tmp_path / "audit.jsonl"
    link.symlink_to(real)
    audit = GatewaySink(link, "gw-1")

    def point_to(target: Path) -> None:
        tmp = link.with_suffix(".tmp")
        tmp.symlink_to(target)
        os.replace(tmp, link)

    async with audit.run():
        await audit.emit("tool.call", durable=True, call_id="before")
        point_to(Path("/dev/full"))
        with pytest.raises(AuditUnavailable):
            await audit.emit("tool.call", durable=True, call_id="refused")
        with pytest.raises(AuditUnavailable, match="No space left"):
            await audit.probe()
        point_to(real)
        await audit.probe()
        await audit.emit("tool.call", durable=True, call_id="after")
    calls = [r.get("call_id") for r in _records(real) if r["event"] == "tool.call"]
    assert calls == ["before", "after"]
    assert [c.broken for c in verify([real], lambda kid: None)] == [None]


async def test_a_durable_record_always_checks_the_file_and_others_within_the_check_interval(tmp_path: Path):
    """Before a durable record the path is checked, before others at most every CHECK_EVERY seconds: one written
    in between lands in the moved file, chained; the first after the interval finds the move and is held."""
    now = [1_000_000.0]
    path, moved = tmp_path / "audit.jsonl", tmp_path / "audit.moved"
    audit = GatewaySink(path, "gw-1", clock=lambda: now[0])

    def replace() -> None:
        path.rename(moved)
        path.touch()

    async with audit.run():
        await audit.emit("tool.call", durable=True, call_id="c1")
        replace()
        await audit.emit("tool.result", call_id="c1")  # within the interval: into the moved file
        assert audit.healthy
        with pytest.raises(AuditUnavailable, match="moved, deleted or replaced"):
            await audit.emit("tool.call", durable=True, call_id="refused")
        moved.replace(path)
        await audit.probe()

        await audit.emit("tool.call", durable=True, call_id="c2")
        replace()
        now[0] += CHECK_EVERY
        await audit.emit("tool.result", call_id="c2")  # past the interval: the move is found, the record held
        assert not audit.healthy
        moved.replace(path)
        await audit.probe()
    records = _records(path)
    assert [(r["event"], r.get("call_id")) for r in records] == [
        ("tool.call", "c1"),
        ("tool.result", "c1"),
        ("audit.recovered", None),
        ("tool.call", "c2"),
        ("tool.result", "c2"),
        ("audit.recovered", None),
    ]
    assert [r["refused"] for r in records if r["event"] == "audit.recovered"] == [1, 0]
    assert [c.broken for c in verify([path], lambda kid: None)] == [None]


async def test_a_closed_sink_refuses_durable_records(gateway: Gateway):
    await gateway.audit.open()
    await gateway.audit.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        await gateway.audit.emit("tool.call", durable=True)


async def test_the_chain_continues_across_rotation_by_size(tmp_path: Path):
    audit = GatewaySink(tmp_path / "audit.jsonl", "gw-1", rotate_bytes=2000)
    async with audit.run():
        for i in range(30):
            await audit.emit("tool.call", durable=True, call_id=f"c{i}", padding="x" * 50)
    files = stream_files(audit.path)
    assert len(files) >= 3
    assert all(f.stat().st_size < 2000 + 300 for f in files)
    assert [c.broken for c in verify(files, lambda kid: None)] == [None]


async def test_the_chain_continues_across_rotation_by_time(tmp_path: Path):
    clock = Clock()
    audit = GatewaySink(tmp_path / "audit.jsonl", "gw-1", rotate_interval=3600, clock=clock)
    async with audit.run():
        await audit.emit("tool.call", durable=True, call_id="early")
        clock.advance(3599)
        await audit.emit("tool.call", durable=True, call_id="late")
        clock.advance(2)
        await audit.emit("tool.call", durable=True, call_id="later")
    rotated, active = stream_files(audit.path)
    assert [r["call_id"] for r in _records(rotated)] == ["early", "late"]
    assert [r["call_id"] for r in _records(active)] == ["later"]
    assert [c.broken for c in verify([rotated, active], lambda kid: None)] == [None]


async def test_a_restart_after_the_tail_was_cut_keeps_the_gap_visible(tmp_path: Path):
    """The store's checkpoint outlives the cut: the chain resumes from it, so verify still names the missing seq."""
    config = _config(tmp_path)
    async with audit_running(config) as gw:
        for i in range(12):
            await gw.audit.emit("tool.call", durable=True, call_id=f"c{i}")
    lines = gw.audit.path.read_text().splitlines()
    gw.audit.path.write_text("".join(line + "\n" for line in lines[:6]))

    async with audit_running(config) as again:
        await again.audit.emit("gateway.started")
    [problem] = broken_links(again)
    assert problem is not None and problem.startswith("seq 7: missing")


async def test_an_incomplete_last_line_left_by_a_crash_is_removed_on_open(gateway: Gateway):
    async with gateway.audit.run():
        await gateway.audit.emit("tool.call", durable=True, call_id="c1")
    with gateway.audit.path.open("ab") as handle:
        handle.write(b'{"event":"tool.call","seq":')
    async with gateway.audit.run():
        await gateway.audit.emit("tool.call", durable=True, call_id="c2")
    assert [r.get("call_id") for r in _records(gateway.audit.path) if r["event"] == "tool.call"] == ["c1", "c2"]
    assert broken_links(gateway) == [None]


async def test_operator_commands_and_the_gateway_write_separatebroken_links(tmp_path: Path):
    config = _config(tmp_path)
    await anyio.to_thread.run_sync(
        main, ["agents", "create", "carol-bot", "--owner", "carol@example.com", "--config", str(config)]
    )
    await anyio.to_thread.run_sync(main, ["agents", "disable", "carol-bot", "--config", str(config)])
    cli = [json.loads(line) for line in (tmp_path / "state" / "audit-cli.jsonl").read_text().splitlines()]
    assert [r["event"] for r in cli] == ["agent.created", "audit.checkpoint", "agent.disabled", "audit.checkpoint"]
    assert [r["seq"] for r in cli] == [1, 2, 3, 4]
    assert {r["gateway"] for r in cli} == {cli[0]["gateway"]} and cli[0]["gateway"].endswith("/cli")


async def test_a_checkpoint_is_written_once_its_interval_has_passed(tmp_path: Path):
    clock = Clock()
    async with audit_running(_config(tmp_path, checkpoint_every=1000, checkpoint_interval="60s"), clock) as gw:
        await gw.audit.emit("tool.call", durable=True, call_id="c1")
        clock.advance(61)
        await gw.audit.emit("tool.result", call_id="c1")
        await gw.audit.emit("tool.call", durable=True, call_id="c2")
        events = [r["event"] for r in _records(gw.audit.path)]
        assert events == ["tool.call", "tool.result", "tool.call", "audit.checkpoint"]
        stored = await gw.store.get_checkpoint(gw.audit.instance)
        assert stored is not None and stored["seq"] == 3
    assert broken_links(gw) == [None]


async def test_a_second_process_cannot_write_the_same_chain_file(tmp_path: Path):
    async with GatewaySink(tmp_path / "audit.jsonl", "gw-1").run() as first:
        await first.emit("gateway.started", durable=True)
        with pytest.raises(OSError, match="being written by another gateway process"):
            await GatewaySink(tmp_path / "audit.jsonl", "gw-1").open()
