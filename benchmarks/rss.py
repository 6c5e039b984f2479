"""The gateway's resident memory with three upstreams, after 10,000 calls and again after 10,000 more.

    .venv/bin/python benchmarks/rss.py [--calls 10000] [--runs 2] [--clients 8] [--mode auto|legacy]
                                       [--tracemalloc [FRAMES]]

Runs the gateway of benchmarks/overhead.py (every control on; server-everything, mcp-server-time and
mcp-server-git over stdio) as its own process and reads its RSS once ready, after one warm-up call, and after
each run of `--calls` echo calls from `--clients` clients (2026-07-28 by default). Issue 19's target: at most
80 MB after the first run, and no growth between runs.

With --tracemalloc the gateway runs under `python -X tracemalloc=FRAMES` and writes a snapshot at each reading
(on SIGUSR1); the report then lists what grew the most between the warm-up and the first run and between the
runs, by source line. tracemalloc sees only Python allocations (not pydantic-core's or SQLite's), and its own
bookkeeping inflates RSS, so its RSS figures are not the target's.
Results go to benchmarks/results/rss.json and rss.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # a sibling script, not a package

# Runs `python -m gateway ...` with a SIGUSR1 handler that writes a tracemalloc snapshot (argv[1] is its folder).
SNAPSHOTTER = """
import os, runpy, signal, sys, tracemalloc
folder, taken = sys.argv.pop(1), [0]
def snapshot(signum, frame):
    taken[0] += 1
    path = os.path.join(folder, f"snapshot-{taken[0]}")
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, snapshot)
sys.argv[0] = "gateway"
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""


def start(config: Path, snapshots: Path | None, frames: int) -> subprocess.Popen[bytes]:
    cli = ["-m", "gateway", "serve", "--config", str(config), "--log-level", "WARNING"]
    if snapshots is not None:
        cli = ["-X", f"tracemalloc={frames}", "-c", SNAPSHOTTER, str(snapshots), *cli[2:]]
    return subprocess.Popen([sys.executable, *cli], cwd=overhead.REPO, stdout=subprocess.DEVNULL)


def snapshot(process: subprocess.Popen[bytes], folder: Path, n: int) -> Path:
    """Asks the gateway for snapshot `n` and waits until it is written."""
    process.send_signal(signal.SIGUSR1)
    path = folder / f"snapshot-{n}"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"the gateway wrote no {path.name}")
        time.sleep(0.2)
    return path


def grown(before: Path, after: Path, top: int = 15) -> list[dict[str, Any]]:
    """The source lines whose live allocations grew the most from `before` to `after`."""
    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]
    diff = new.filter_traces(ignore).compare_to(old.filter_traces(ignore), "lineno")
    return [
        {
            "where": f"{d.traceback[0].filename.split('site-packages/')[-1]}:{d.traceback[0].lineno}",
            "kib": round(d.size_diff / 1024, 1),
            "blocks": d.count_diff,
        }
        for d in diff[:top]
    ]


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    port = overhead.free_port()
    config = overhead.write_config(root, port)
    snapshots = root / "snapshots" if args.tracemalloc else None
    if snapshots is not None:
        snapshots.mkdir()
    process = start(config, snapshots, args.tracemalloc or 1)
    url = f"http://127.0.0.1:{port}"
    readings: list[dict[str, Any]] = []
    taken: list[Path] = []
    try:
        overhead.wait_ready(url, process, timeout=120)
        gateway = overhead.gateway_process(process)

        def read(label: str, **extra: Any) -> None:
            if snapshots is not None:
                taken.append(snapshot(process, snapshots, len(taken) + 1))
            readings.append({"label": label, "rss_mb": overhead.rss_mb(gateway), **extra})
            print(f"{label}: {readings[-1]['rss_mb']} MB", flush=True)

        read("ready")
        token = overhead.open_session(config)
        connect = overhead.via_gateway(f"{url}/servers/everything/mcp", token, args.mode)
        async with connect() as call:
            await call()
        read("after 1 call")
        for run in range(args.runs):
            cpu = await overhead.cpu_run(f"run {run + 1}", gateway, connect, args)
            read(
                f"after run {run + 1} ({args.calls * (run + 1):,} calls)",
                calls_per_s=cpu["calls_per_s"],
                cpu_ms_per_call=cpu["cpu_ms_per_call"],
            )
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": overhead.machine(),
        "mode": args.mode,
        "calls": args.calls,
        "clients": args.clients,
        "tracemalloc": args.tracemalloc,
        "readings": readings,
    }
    if len(taken) >= 3:
        out["grown"] = {
            f"{readings[i - 1]['label']} -> {readings[i]['label']}": grown(taken[i - 1], taken[i])
            for i in range(2, len(taken))
        }
    return out


def report(out: dict[str, Any]) -> str:
    lines = [
        f"{out['date']} on {out['machine']}; {out['clients']} clients, "
        f"{'2026-07-28' if out['mode'] == 'auto' else '2025-11-25'}"
        + (f", under tracemalloc ({out['tracemalloc']} frames: RSS inflated)" if out["tracemalloc"] else ""),
        "",
        "| gateway, three stdio upstreams | RSS MB |",
        "|---|---|",
        *[f"| {r['label']} | {r['rss_mb']} |" for r in out["readings"]],
    ]
    for span, rows in out.get("grown", {}).items():
        lines += ["", f"Grown most, {span}:", "", "| where | KiB | blocks |", "|---|---|---|"]
        lines += [f"| {r['where']} | {r['kib']} | {r['blocks']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per run (default %(default)s)")
    parser.add_argument("--runs", type=int, default=2, help="runs, RSS read after each (default %(default)s)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="auto: 2026-07-28")
    parser.add_argument(
        "--tracemalloc", type=int, nargs="?", const=10, default=0, metavar="FRAMES", help="snapshot and diff"
    )
    args = parser.parse_args()
    overhead.RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = anyio.run(measure, args, Path(tmp))
    name = "rss-tracemalloc" if args.tracemalloc else "rss"
    (overhead.RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    text = report(out)
    (overhead.RESULTS / f"{name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
