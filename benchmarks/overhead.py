"""What the gateway costs per tool call, measured against calling the upstream directly.

    .venv/bin/python benchmarks/overhead.py [--calls 10000] [--sequential 300] [--clients 8] [--profile]

Starts real upstreams (server-everything over stdio, mcp-server-time, mcp-server-git) and the
gateway as its own process with every control on (JWT auth, session check, grant decision,
budget reserve/settle, durable audit), then drives both paths with the official SDK client:
sequential p50/p99 latency, calls/s with 1 and N concurrent clients, the gateway process's own
CPU time per call (its counters only; upstream processes excluded) and its RSS. With --profile
the gateway runs under pyinstrument and the report is written next to the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from gateway.upstream.http_client import mcp_http_client

REPO = Path(__file__).resolve().parents[1]
EVERYTHING = REPO / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
RESULTS = REPO / "benchmarks" / "results"


@dataclass
class Run:
    path: str
    p50_ms: float
    p99_ms: float
    seq_calls: int
    rps_1: float
    rps_n: float
    clients: int


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def sequential(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    for _ in range(100):  # warm up: lazily built validators, caches, the first fsyncs
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def throughput(connect: Callable[[], Any], clients: int, total: int) -> float:
    per_client = total // clients
    ready = anyio.Event()
    started: list[float] = []

    async def worker() -> None:
        async with connect() as call:
            await call()
            started.append(time.perf_counter())
            if len(started) == clients:
                ready.set()
            await ready.wait()
            for _ in range(per_client):
                await call()

    begin = 0.0
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(worker)
        await ready.wait()
        begin = time.perf_counter()
    return per_client * clients / (time.perf_counter() - begin)


def echo(client: Client, tool: str = "echo") -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        result = await client.call_tool(tool, {"message": "benchmark"})
        assert not result.is_error

    return call


@contextlib.asynccontextmanager
async def direct() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
    async with Client(params, cache=None) as client:
        yield echo(client)


def via_gateway(url: str, token: str, mode: str, tool: str = "echo") -> Callable[[], Any]:
    """Connections to a streamable-HTTP endpoint (the gateway's or a peer's) that call `tool` like `echo`."""

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        async with mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
                yield echo(client, tool)

    return connect


def write_config(root: Path, port: int, *, unsandboxed: bool = False, http_upstream: str | None = None) -> Path:
    """The benchmark's gateway.yaml; `unsandboxed` for a gateway under valgrind, which does not know the Landlock
    system calls (the gateway would find no sandbox and refuse its stdio servers). The sandbox applies to the
    children only, at their start: it costs the gateway nothing per call. With `http_upstream` (a streamable-HTTP
    server-everything's URL) a fourth server, `everything-http`, fronts it under the same grant and constraints."""
    manifests = root / "manifests"
    manifests.mkdir()
    servers: dict[str, dict[str, Any]] = {
        "everything": {
            "transport": "stdio",
            "command": "node",
            "args": [str(EVERYTHING), "stdio"],
            "tools": "*",
            "isolation": "shared",
        },
        "time": {"transport": "stdio", "command": "python", "args": ["-m", "mcp_server_time"], "tools": "*"},
        "git": {"transport": "stdio", "command": "python", "args": ["-m", "mcp_server_git"], "tools": "*"},
    }
    echo_tools = ["everything.echo"]
    if http_upstream is not None:
        servers["everything-http"] = {"transport": "http", "url": http_upstream, "tools": "*"}
        echo_tools.append("everything-http.echo")
    for name, manifest in servers.items():
        if unsandboxed and manifest["transport"] == "stdio":  # an http manifest has no sandbox to turn off
            manifest["sandbox"] = "off"
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "owner": "b@example.com", **manifest}))
    (root / "agents.yaml").write_text(
        yaml.safe_dump(
            {
                "agents": {
                    "bench-bot": {
                        "owner": "bench@example.com",
                        "grant": {
                            "tools": [*echo_tools, "time.*"],
                            "arguments": {
                                tool: {"message": {"pattern": "[a-z]+", "max_length": 64}} for tool in echo_tools
                            },
                            "budget": {
                                "session_calls": 10_000_000,
                                "session_tokens": 10_000_000_000,
                                "session_ttl": "8h",
                                "idle_timeout": "1h",
                            },
                        },
                    }
                }
            }
        )
    )
    config = {
        "public_url": f"http://127.0.0.1:{port}",
        "listen": {"host": "127.0.0.1", "port": port},
        "state_dir": "./state",
        "signing_key": "./state/signing.pem",
        "store": "sqlite:///state/gateway.db",
        "audit": {"path": "./state/audit.jsonl"},
        "manifests": "./manifests",
        "agents": "./agents.yaml",
    }
    (root / "gateway.yaml").write_text(yaml.safe_dump(config))
    return root / "gateway.yaml"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(config: Path, profile: Path | None) -> subprocess.Popen[bytes]:
    cli = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", "WARNING"]
    if profile is not None:
        cli = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(profile), "-m", "gateway", *cli[3:]]
    return subprocess.Popen(cli, cwd=REPO, stdout=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the gateway exited during startup")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not become ready in {timeout:g}s")


def open_session(config: Path) -> str:
    """A session token for the benchmark agent, from the CLI."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "sessions",
            "open",
            "--config",
            str(config),
            "--agent",
            "bench-bot",
            "--task",
            "benchmark",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def gateway_process(process: subprocess.Popen[bytes]) -> psutil.Process:
    """The gateway's own process (under pyinstrument it is the same process)."""
    return psutil.Process(process.pid)


async def timed(label: str, connect: Callable[[], Any], args: argparse.Namespace) -> Run:
    """Sequential p50/p99 over one connection, then calls/s with 1 and N clients."""
    async with connect() as call:
        samples = await sequential(call, args.sequential)
    return Run(
        label,
        statistics.median(samples),
        percentile(samples, 0.99),
        args.sequential,
        await throughput(connect, 1, args.throughput),
        await throughput(connect, args.clients, args.throughput),
        args.clients,
    )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    runs = [await timed("direct stdio", direct, args)]

    floors = []
    # JSON responses: the SDK's cheapest mode, and what the gateway answers plain 2026-07-28 calls with.
    for label, flags in (
        ("SDK server, echo in process (floor)", ["--json"]),
        ("SDK bridge to stdio, no controls", ["--bridge", "--json"]),
    ):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "floor.py"), "--port", str(port), *flags],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, process)
            connect = via_gateway(f"http://127.0.0.1:{port}/mcp", "unused", "auto")
            runs.append(await timed(label, connect, args))
            floors.append(await cpu_run(label, psutil.Process(process.pid), connect, args))
        finally:
            process.send_signal(2)
            process.wait(30)
    out["floors"] = floors

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = write_config(Path(tmp), port)
        profile = RESULTS / "profile.txt" if args.profile else None
        process = start_gateway(config, profile)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            token = open_session(config)
            gateway = gateway_process(process)
            for mode, label in (("auto", "gateway 2026-07-28"), ("legacy", "gateway 2025-11-25")):
                connect = via_gateway(f"{url}/servers/everything/mcp", token, mode)
                runs.append(await timed(label, connect, args))
                if mode == "auto":
                    # twice: RSS must not grow between runs. Before the 2025-11-25 runs, whose SSE answers
                    # make the SDK client open a connection for most calls: those raise the high-water mark.
                    out["cpu"] = [await cpu_run(f"gateway run {i + 1}", gateway, connect, args) for i in range(2)]
            out["rss_after_legacy_mb"] = round(gateway.memory_info().rss / 2**20, 1)
        finally:
            process.send_signal(2)
            process.wait(30)
    out["runs"] = [asdict(r) for r in runs]
    base = runs[0]
    out["ratios"] = {
        r.path: {"p50": round(r.p50_ms / base.p50_ms, 2), "rps_n": round(r.rps_n / base.rps_n, 2)} for r in runs[1:]
    }
    return out


ServerProcesses = psutil.Process | Callable[[], Sequence[psutil.Process]]


def _processes(server: ServerProcesses) -> Sequence[psutil.Process]:
    return [server] if isinstance(server, psutil.Process) else server()


def _cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def rss_mb(server: ServerProcesses) -> float:
    total = 0
    for process in _processes(server):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return round(total / 2**20, 1)


async def cpu_run(
    label: str, server: ServerProcesses, connect: Callable[[], Any], args: argparse.Namespace
) -> dict[str, Any]:
    """CPU time of `server` (its own counters, children excluded) and of this client over `args.calls` calls.

    `server` is one process, or a function naming the processes that make up a server that runs several (asked
    before and after the run; a process that only exists at the end counts from its start)."""
    me = psutil.Process()
    before, mine = _cpu_seconds(_processes(server)), me.cpu_times()
    wall = time.perf_counter()
    await throughput(connect, args.clients, args.calls)
    wall = time.perf_counter() - wall
    after, mine_after = _cpu_seconds(_processes(server)), me.cpu_times()
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    client = (mine_after.user - mine.user) + (mine_after.system - mine.system)
    return {
        "label": label,
        "calls": args.calls,
        "cpu_ms_per_call": round(used / args.calls * 1000, 3),
        "calls_per_s": round(args.calls / wall, 1),
        "rss_mb": rss_mb(server),
        "client_cpu_share": round(client / wall / psutil.cpu_count(), 3),
        "server_cpu_share": round(used / wall / psutil.cpu_count(), 3),
    }


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30, what: str = "the floor server") -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited during startup")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start in {timeout:g}s")


def machine() -> str:
    return (
        f"{platform.machine()}, {psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def report(out: dict[str, Any]) -> str:
    lines = [
        f"{out['date']} on {out['machine']}",
        "",
        f"| path | p50 ms | p99 ms | calls/s, 1 client | calls/s, {out['runs'][0]['clients']} clients |",
        "|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        lines.append(f"| {r['path']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps_1']:.0f} | {r['rps_n']:.0f} |")
    lines += ["", "| ratio to direct stdio | p50 | calls/s (N clients) |", "|---|---|---|"]
    lines += [f"| {k} | {v['p50']}x | {v['rps_n']}x |" for k, v in out["ratios"].items()]
    lines += [
        "",
        "| server process | calls | CPU ms/call | calls/s | RSS MB | client CPU share | server CPU share |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['label']} | {c['calls']} | {c['cpu_ms_per_call']} | {c['calls_per_s']} | "
        f"{c['rss_mb']} | {c['client_cpu_share']} | {c['server_cpu_share']} |"
        for c in [*out["floors"], *out["cpu"]]
    ]
    lines += ["", f"Gateway RSS after the 2025-11-25 runs as well: {out['rss_after_legacy_mb']} MB"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per CPU/RSS run (default %(default)s)")
    parser.add_argument("--sequential", type=int, default=300, help="sequential calls for p50/p99")
    parser.add_argument("--throughput", type=int, default=2_000, help="calls per throughput measurement")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="run the gateway under pyinstrument")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = anyio.run(measure, args)
    (RESULTS / "overhead.json").write_text(json.dumps(out, indent=2))
    text = report(out)
    (RESULTS / "overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
