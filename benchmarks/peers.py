"""The gateway beside other MCP proxies and gateways, fronting the same tool on the same machine.

    .venv/bin/python benchmarks/peers.py [--rounds 3] [--calls 1000] [--sequential 300] [--clients 8]
                                         [--only NAME ...] [--quick | --short]

Installs each peer from PyPI into its own virtual environment under benchmarks/.peers/ (git-ignored; kept
between runs, `--reinstall` starts afresh): mcp-proxy (sparfenyuk, stdio to streamable HTTP, no controls),
FastMCP's proxy (`fastmcp.server.create_proxy`) and IBM ContextForge (`mcp-contextforge-gateway`: SQLite,
JWT auth, the upstream registered through its admin API and exposed as a virtual server). Every peer fronts
server-everything's `echo` over stdio and, where it can, over streamable HTTP; the gateway does both with
every control on (overhead.py's configuration), in the 2026-07-28 and 2025-11-25 protocol eras.

Each round drives every target once, in alternating order (A B C D, D C B A, ...), with the official SDK
client: sequential p50/p99 (after 100 warm-up calls), calls/s with 1 and N clients, and the server's CPU
time per call under N clients: its own processes' counters (the peer's process tree, plus ContextForge's
stdio bridge), upstream server processes excluded. RSS is the same processes' resident memory at the end.
Two floors run beside them (`floors`, not product configurations): the same gateway with every control
stubbed out (benchmarks/breakdown.py's stubs: what the controls sit on), and the client straight to
server-everything over HTTP with no proxy at all (the most calls/s the client and that upstream make here).
The table shows each figure's median over the rounds and its ratio to the gateway on the same upstream
transport. A peer that cannot be installed or started is reported with the reason; the others still run.
Results go to benchmarks/results/peers.json and peers.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import breakdown
import httpx
import overhead
import psutil
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.upstream.http_client import mcp_http_client

PEERS = overhead.REPO / "benchmarks" / ".peers"
EVERYTHING = overhead.EVERYTHING
PRELOAD = overhead.REPO / "tests" / "support" / "loopback-preload.cjs"
PACKAGES = {"mcp-proxy": "mcp-proxy", "fastmcp": "fastmcp", "contextforge": "mcp-contextforge-gateway"}
ENTRY = {"mcp-proxy": "mcp-proxy", "fastmcp": "fastmcp", "contextforge": "mcpgateway"}

# mode="auto": by default the proxy speaks the front connection's era to its backend, and a 2026-07-28 front
# then sends server-everything (handshake era only) requests whose answers fail FastMCP's validation.
FASTMCP_PROXY = """
import sys
from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy
target, port = sys.argv[1], int(sys.argv[2])
backend = target if target.startswith("http") else StdioTransport(command="node", args=[target, "stdio"])
create_proxy(backend, name="bench", mode="auto").run(transport="http", host="127.0.0.1", port=port, show_banner=False,
                                        log_level="warning")
"""


class Unavailable(Exception):
    """A peer that cannot be installed or started here; the message says why, in one line."""


@dataclass
class Target:
    label: str
    peer: str
    upstream: str
    mode: str
    url: str
    tool: str = "echo"
    token: str = "unused"
    processes: Callable[[], Sequence[psutil.Process]] = list
    protocol: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    proxy: bool = True  # False: nothing between the client and the upstream, so no server CPU or RSS to read


def peer_env() -> dict[str, str]:
    """The environment for a peer's venv: the gateway's pip constraints and venv do not apply there."""
    env = {k: v for k, v in os.environ.items() if k not in {"PIP_CONSTRAINT", "VIRTUAL_ENV", "PYTHONPATH"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def install(name: str, reinstall: bool) -> tuple[Path, str]:
    """The peer's venv (created and filled from PyPI if missing) and the installed version.

    Raises:
        Unavailable: pip could not install it.
    """
    venv = PEERS / name
    if reinstall and venv.exists():
        shutil.rmtree(venv)
    package = PACKAGES[name]
    if not (venv / "bin" / ENTRY[name]).exists():
        print(f"installing {package} into {venv.relative_to(overhead.REPO)} ...", flush=True)
        steps = {
            "python -m venv": [sys.executable, "-m", "venv", "--clear", str(venv)],
            f"pip install {package}": [
                str(venv / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                package,
            ],
        }
        for what, step in steps.items():
            done = subprocess.run(step, capture_output=True, text=True, env=peer_env())
            if done.returncode != 0:
                lines = [
                    line
                    for line in (done.stderr or done.stdout).splitlines()
                    if line.strip() and not line.startswith("WARNING: Location")
                ]
                raise Unavailable(f"{what} failed: {lines[-1] if lines else done.returncode}")
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        env=peer_env(),
    ).stdout.strip()
    return venv, version


def is_upstream(process: psutil.Process) -> bool:
    """server-everything (node) or the gateway's Python upstreams; the peers themselves are Python processes
    whose command lines may name server-everything too."""
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        return process.name().startswith("node") or any(a in {"mcp_server_time", "mcp_server_git"} for a in argv)
    return True


def tree(*roots: subprocess.Popen[bytes]) -> Callable[[], Sequence[psutil.Process]]:
    """The processes of a peer: each root and its descendants, upstream servers left out."""

    def processes() -> Sequence[psutil.Process]:
        found = []
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(root.pid)
                found += [top, *top.children(recursive=True)]
        return [p for p in found if not is_upstream(p)]

    return processes


class Processes:
    """Processes this run started, each in its own process group, stopped on exit (SIGINT, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        log.close()
        self.started.append(process)
        return process

    def last_line(self, name: str) -> str:
        lines = [line for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else "(no output)"

    def stop(self) -> None:
        for process in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        for process in reversed(self.started):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: children that outlive their parent
            process.wait(5)


def http_everything(procs: Processes, name: str) -> str:
    """A streamable-HTTP server-everything on a free loopback port; its /mcp URL."""
    port = overhead.free_port()
    process = procs.start(
        name,
        ["node", "-r", str(PRELOAD), str(EVERYTHING), "streamableHttp"],
        cwd=overhead.REPO,
        env={**os.environ, "PORT": str(port)},
    )
    wait(port, process, name, procs)
    return f"http://127.0.0.1:{port}/mcp"


def wait(port: int, process: subprocess.Popen[bytes], name: str, procs: Processes, timeout: float = 60) -> None:
    try:
        overhead.wait_port(port, process, timeout, what=name)
    except SystemExit as exc:
        raise Unavailable(f"{exc}: {procs.last_line(name)}") from None


def serve_gateway(
    procs: Processes, name: str, root: Path, program: list[str], http_upstream: str | None = None
) -> tuple[str, str, subprocess.Popen[bytes]]:
    """overhead.py's gateway, run by `program` (python's arguments before `serve`) with its config under `root`:
    its URL, a session token and its process, once it is ready."""
    port = overhead.free_port()
    config = overhead.write_config(root, port, http_upstream=http_upstream)
    process = procs.start(
        name,
        [sys.executable, *program, "serve", "--config", str(config), "--log-level", "WARNING"],
        cwd=overhead.REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        overhead.wait_ready(url, process)
    except SystemExit as exc:
        raise Unavailable(f"{exc}: {procs.last_line(name)}") from None
    return url, overhead.open_session(config), process


def start_gateway(procs: Processes, root: Path) -> list[Target]:
    http_url = http_everything(procs, "gateway-upstream")
    url, token, process = serve_gateway(procs, "gateway", root, ["-m", "gateway"], http_url)
    own = lambda: [overhead.gateway_process(process)]  # noqa: E731 - its children are the upstreams
    return [
        Target(
            "gateway 2026-07-28, stdio",
            "gateway",
            "stdio",
            "auto",
            f"{url}/servers/everything/mcp",
            token=token,
            processes=own,
        ),
        Target(
            "gateway 2025-11-25, stdio",
            "gateway",
            "stdio",
            "legacy",
            f"{url}/servers/everything/mcp",
            token=token,
            processes=own,
        ),
        Target(
            "gateway 2026-07-28, HTTP",
            "gateway",
            "http",
            "auto",
            f"{url}/servers/everything-http/mcp",
            token=token,
            processes=own,
        ),
    ]


def start_floors(procs: Processes, root: Path) -> list[Target]:
    """The gateway with every control stubbed out, and no proxy at all (the client straight to an HTTP upstream)."""
    (root / "floor").mkdir()
    stubbed = breakdown.stubbed_gateway(list(breakdown.STUBS))
    url, token, process = serve_gateway(procs, "gateway-floor", root / "floor", stubbed)
    return [
        Target(
            "gateway 2026-07-28, stdio, every control stubbed out",
            "floors",
            "stdio",
            "auto",
            f"{url}/servers/everything/mcp",
            token=token,
            processes=lambda: [overhead.gateway_process(process)],
        ),
        Target(
            "no proxy: the client straight to server-everything, HTTP",
            "floors",
            "http",
            "legacy",  # server-everything speaks the handshake era only
            http_everything(procs, "direct-upstream"),
            proxy=False,
        ),
    ]


def start_mcp_proxy(procs: Processes, venv: Path, version: str) -> list[Target]:
    port = overhead.free_port()
    process = procs.start(
        "mcp-proxy",
        [
            str(venv / "bin" / "mcp-proxy"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            "--",
            "node",
            str(EVERYTHING),
            "stdio",
        ],
        cwd=overhead.REPO,
        env=peer_env(),
    )
    wait(port, process, "mcp-proxy", procs)
    # mcp-proxy's server side bridges a stdio command only; an HTTP upstream has no mode to front it.
    return [
        Target(
            f"mcp-proxy {version}, stdio",
            "mcp-proxy",
            "stdio",
            "auto",
            f"http://127.0.0.1:{port}/mcp",
            processes=tree(process),
        )
    ]


def start_fastmcp(procs: Processes, venv: Path, version: str) -> list[Target]:
    targets = []
    for upstream in ("stdio", "http"):
        backend = str(EVERYTHING) if upstream == "stdio" else http_everything(procs, "fastmcp-upstream")
        port = overhead.free_port()
        name = f"fastmcp-{upstream}"
        process = procs.start(
            name,
            [str(venv / "bin" / "python"), "-c", FASTMCP_PROXY, backend, str(port)],
            cwd=overhead.REPO,
            env=peer_env(),
        )
        wait(port, process, name, procs)
        targets.append(
            Target(
                f"FastMCP proxy {version}, {'HTTP' if upstream == 'http' else 'stdio'}",
                "fastmcp",
                upstream,
                "auto",
                f"http://127.0.0.1:{port}/mcp",
                processes=tree(process),
            )
        )
    return targets


def start_contextforge(procs: Processes, venv: Path, version: str, root: Path, stateless: bool) -> list[Target]:
    """ContextForge as its quick start runs it (uvicorn, SQLite), auth on, admin API on, localhost upstreams
    allowed; stateful sessions unless `stateless`. A stdio server reaches it through its own bridge,
    `mcpgateway.translate`, whose CPU counts as ContextForge's."""
    home = root / "contextforge"
    home.mkdir()
    secret = secrets.token_urlsafe(48)
    env = {
        **peer_env(),
        "HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home}/mcp.db",
        "JWT_SECRET_KEY": secret,
        "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "PLATFORM_ADMIN_PASSWORD": f"Bench-{secrets.token_urlsafe(12)}!9",
        "BASIC_AUTH_PASSWORD": f"Bench-{secrets.token_urlsafe(12)}!9",
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",
        "MCPGATEWAY_UI_ENABLED": "false",
        "SSRF_ALLOW_LOCALHOST": "true",
        "CACHE_TYPE": "memory",
        "LOG_LEVEL": "ERROR",
        "RATE_LIMITING_ENABLED": "false",
        "USE_STATEFUL_SESSIONS": "false" if stateless else "true",
    }
    bridge_port = overhead.free_port()
    bridge = procs.start(
        "contextforge-translate",
        [
            str(venv / "bin" / "python"),
            "-m",
            "mcpgateway.translate",
            "--stdio",
            f"node {EVERYTHING} stdio",
            "--expose-streamable-http",
            "--host",
            "127.0.0.1",
            "--port",
            str(bridge_port),
            "--logLevel",
            "error",
        ],
        cwd=home,
        env=env,
    )
    http_url = http_everything(procs, "contextforge-upstream")
    port = overhead.free_port()
    process = procs.start(
        "contextforge",
        [str(venv / "bin" / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=home,
        env=env,
    )
    wait(bridge_port, bridge, "contextforge-translate", procs)
    wait(port, process, "contextforge", procs, timeout=180)
    base = f"http://127.0.0.1:{port}"
    made = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "mcpgateway.utils.create_jwt_token",
            "--username",
            "admin@example.com",
            "--exp",
            "1440",
            "--secret",
            secret,
        ],
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise Unavailable(f"create_jwt_token failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
    token = made.stdout.strip().splitlines()[-1]
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    targets = []
    for upstream, url in (("stdio", f"http://127.0.0.1:{bridge_port}/mcp"), ("http", http_url)):
        name = f"everything-{upstream}"
        answer = admin.post("/gateways", json={"name": name, "url": url, "transport": "STREAMABLEHTTP"})
        if answer.status_code >= 300:
            raise Unavailable(f"registering {url} failed: {answer.status_code} {answer.text[:200]}")
        tools = [
            t
            for t in admin.get("/tools").json()
            if t.get("originalName") == "echo" and t.get("gatewayId", t.get("gateway_id")) == answer.json()["id"]
        ]
        if not tools:
            raise Unavailable(f"ContextForge found no echo tool on {url}")
        server = admin.post(
            "/servers", json={"server": {"name": f"bench-{upstream}", "associated_tools": [tools[0]["id"]]}}
        )
        if server.status_code >= 300:
            raise Unavailable(f"creating the virtual server failed: {server.status_code} {server.text[:200]}")
        parts = [process, bridge] if upstream == "stdio" else [process]
        targets.append(
            Target(
                f"ContextForge {version}, {'HTTP' if upstream == 'http' else 'stdio'}",
                "contextforge",
                upstream,
                "auto",
                f"{base}/servers/{server.json()['id']}/mcp",
                tool=tools[0]["name"],
                token=token,
                processes=tree(*parts),
            )
        )
    return targets


async def negotiated(target: Target) -> str:
    async with mcp_http_client(headers={"Authorization": f"Bearer {target.token}"}) as http:
        async with Client(streamable_http_client(target.url, http_client=http), mode=target.mode, cache=None) as client:
            await overhead.echo(client, target.tool)()
            return str(client.protocol_version)


async def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    connect = overhead.via_gateway(target.url, target.token, target.mode, target.tool)
    async with connect() as call:
        samples = await overhead.sequential(call, args.sequential)
    rps_1 = await overhead.throughput(connect, 1, args.calls)
    cpu = await overhead.cpu_run(target.label, target.processes, connect, args)
    result = {
        "p50_ms": statistics.median(samples),
        "p99_ms": overhead.percentile(samples, 0.99),
        "rps_1": rps_1,
        "rps_n": cpu["calls_per_s"],
    }
    if target.proxy:
        result.update(cpu_ms_per_call=cpu["cpu_ms_per_call"], rss_mb=cpu["rss_mb"])
    return result


def start_all(procs: Processes, root: Path, args: argparse.Namespace) -> tuple[list[Target], dict[str, str]]:
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    wanted = args.only or ["gateway", *PACKAGES, "floors"]
    for name in wanted:
        try:
            if name == "gateway":
                targets += start_gateway(procs, root)
                continue
            if name == "floors":
                targets += start_floors(procs, root)
                continue
            venv, version = install(name, args.reinstall)
            if name == "mcp-proxy":
                targets += start_mcp_proxy(procs, venv, version)
            elif name == "fastmcp":
                targets += start_fastmcp(procs, venv, version)
            else:
                targets += start_contextforge(procs, venv, version, root, args.contextforge_stateless)
        except (Unavailable, OSError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            unavailable[name] = str(exc) or type(exc).__name__
            print(f"{name}: unavailable: {unavailable[name]}", flush=True)
    return targets, unavailable


async def run_rounds(targets: list[Target], args: argparse.Namespace) -> None:
    for target in targets:
        try:
            target.protocol = await negotiated(target)
        except Exception as exc:  # a peer that cannot answer is reported; the others still run
            target.error = f"first call failed: {one_line(exc)}"
            print(f"{target.label}: {target.error}", flush=True)
    live = [t for t in targets if not t.error]
    for round_no in range(args.rounds):
        order = live if round_no % 2 == 0 else live[::-1]
        for target in order:
            if target.error:
                continue
            try:
                result = await measure(target, args)
            except Exception as exc:
                target.error = f"round {round_no + 1} failed: {one_line(exc)}"
                print(f"{target.label}: {target.error}", flush=True)
                continue
            target.rounds.append(result)
            cpu = f", CPU {result['cpu_ms_per_call']:.2f} ms/call" if target.proxy else ""
            print(
                f"round {round_no + 1}: {target.label}: p50 {result['p50_ms']:.2f} ms, "
                f"{result['rps_n']:.0f} calls/s ({args.clients} clients){cpu}",
                flush=True,
            )


def one_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


METRICS = ("p50_ms", "p99_ms", "rps_1", "rps_n", "cpu_ms_per_call", "rss_mb")


def summarise(targets: list[Target]) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        row: dict[str, Any] = {
            "label": target.label,
            "peer": target.peer,
            "upstream": target.upstream,
            "protocol": target.protocol,
            "rounds": len(target.rounds),
            "error": target.error,
        }
        if target.rounds:
            measured = [m for m in METRICS if m in target.rounds[0]]
            row.update({m: round(statistics.median(r[m] for r in target.rounds), 3) for m in measured})
            if "rss_mb" in row:
                row["rss_mb"] = target.rounds[-1]["rss_mb"]  # at the end, not the median: growth shows
        rows.append(row)
    for row in rows:
        reference = next(
            (
                r
                for r in rows
                if r["peer"] == "gateway"
                and r["upstream"] == row["upstream"]
                and r["protocol"] == "2026-07-28"
                and "p50_ms" in r
            ),
            None,
        )
        if reference is not None and "p50_ms" in row:
            row["vs_gateway"] = {
                m: round(row[m] / reference[m], 2)
                for m in ("p50_ms", "rps_n", "cpu_ms_per_call")
                if m in row and reference[m]
            }
    return rows


def targets_check(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 19's ratio targets, where this run measured both sides."""
    by = {(r["peer"], r["upstream"], r["protocol"]): r for r in rows if "p50_ms" in r}
    gw = by.get(("gateway", "stdio", "2026-07-28"))
    legacy = by.get(("gateway", "stdio", "2025-11-25"))
    gw_http = by.get(("gateway", "http", "2026-07-28"))
    proxy = next((r for k, r in by.items() if k[0] == "mcp-proxy"), None)
    forge = {k[1]: r for k, r in by.items() if k[0] == "contextforge"}
    lines = []

    def check(text: str, value: float, limit: float, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        bound = f"{'<=' if at_most else '>='} {limit:g}x"
        lines.append(f"| {text} | {value:.2f}x | {bound} | {'met' if met else 'missed'} |")

    if gw and proxy:
        check("gateway CPU/call, 2026-07-28, to mcp-proxy's", gw["cpu_ms_per_call"] / proxy["cpu_ms_per_call"], 0.7)
        check("gateway p50, 2026-07-28, to mcp-proxy's", gw["p50_ms"] / proxy["p50_ms"], 1.0)
    if legacy and proxy:
        check("gateway p50, 2025-11-25, to mcp-proxy's", legacy["p50_ms"] / proxy["p50_ms"], 1.0)
    if gw and gw_http:
        check("gateway CPU/call, HTTP upstream to stdio", gw_http["cpu_ms_per_call"] / gw["cpu_ms_per_call"], 1.3)
    for upstream, mine in (("stdio", gw), ("http", gw_http)):
        if mine and upstream in forge:
            check(
                f"gateway calls/s ({upstream}) to ContextForge's",
                mine["rps_n"] / forge[upstream]["rps_n"],
                10,
                at_most=False,
            )
    return lines


def floors_check(rows: list[dict[str, Any]]) -> list[str]:
    """Where the floors put the CPU and HTTP calls/s targets, where this run measured both sides."""
    by = {(r["peer"], r["upstream"]): r for r in rows if "p50_ms" in r}
    stubbed, direct = by.get(("floors", "stdio")), by.get(("floors", "http"))
    proxy, forge = by.get(("mcp-proxy", "stdio")), by.get(("contextforge", "http"))
    lines = []
    if stubbed and proxy:
        lines.append(
            "| the gateway's CPU/call with every control stubbed out, to mcp-proxy's (the target, 0.7x, with them on) "
            f"| {stubbed['cpu_ms_per_call'] / proxy['cpu_ms_per_call']:.2f}x |"
        )
    if direct and forge:
        lines.append(
            "| 10x ContextForge's calls/s over HTTP, to the client's straight to the upstream (no proxy) "
            f"| {10 * forge['rps_n'] / direct['rps_n']:.2f}x |"
        )
    return lines


def report(out: dict[str, Any]) -> str:
    n = out["clients"]
    lines = [
        f"{out['date']} on {out['machine']}; medians of {out['rounds']} interleaved rounds, each "
        f"{out['sequential']} sequential calls, then {out['calls']} calls with 1 and with {n} clients "
        f"(CPU and RSS: the {n}-client run)",
        "",
        f"| path | protocol | p50 ms | p99 ms | calls/s, 1 client | calls/s, {n} clients | CPU ms/call | RSS MB "
        "| p50 / gateway | calls/s / gateway | CPU / gateway |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        if "p50_ms" not in r:
            lines.append(f"| {r['label']} | {r['protocol'] or '-'} | failed: {r['error']} |||||||||")
            continue
        ratios = " | ".join(
            f"{r['vs_gateway'][m]:.2f}x" if m in r.get("vs_gateway", {}) else "-"
            for m in ("p50_ms", "rps_n", "cpu_ms_per_call")
        )
        cpu = f"{r['cpu_ms_per_call']:.2f}" if "cpu_ms_per_call" in r else "-"
        rss = f"{r['rss_mb']:.0f}" if "rss_mb" in r else "-"
        lines.append(
            f"| {r['label']} | {r['protocol']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps_1']:.0f} "
            f"| {r['rps_n']:.0f} | {cpu} | {rss} | {ratios} |"
        )
    lines += ["", "Ratios are to the gateway in 2026-07-28 mode on the same upstream transport."]
    if out["unavailable"]:
        lines += ["", *[f"- {name}: not measured: {why}" for name, why in out["unavailable"].items()]]
    checks = targets_check(out["rows"])
    if checks:
        lines += ["", "| issue 19 target | this run | target | |", "|---|---|---|---|", *checks]
    bounds = floors_check(out["rows"])
    if bounds:
        lines += ["", "| what the floors say of the targets | this run |", "|---|---|", *bounds]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument(
        "--calls",
        type=int,
        default=1000,
        help="calls per throughput and CPU measurement, 1 and N clients (default %(default)s)",
    )
    parser.add_argument("--sequential", type=int, default=300, help="sequential calls for p50/p99 (default 300)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--only", nargs="+", choices=["gateway", *PACKAGES, "floors"], help="measure only these")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 100 calls each")
    parser.add_argument(
        "--short",
        action="store_true",
        help="2 rounds of 200 sequential and 600 calls each: about 6 minutes on a 2-core machine",
    )
    parser.add_argument("--reinstall", action="store_true", help="recreate the peers' venvs from PyPI")
    parser.add_argument(
        "--contextforge-stateless",
        action="store_true",
        help="ContextForge without stateful sessions (its default; stateful is the one compared)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls, args.sequential = 1, 100, 100
    elif args.short:
        args.rounds, args.calls, args.sequential = 2, 600, 200
    if args.calls < args.clients:
        parser.error("--calls must be at least --clients")
    overhead.RESULTS.mkdir(parents=True, exist_ok=True)
    PEERS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        procs = Processes(root)
        try:
            targets, unavailable = start_all(procs, root, args)
            anyio.run(run_rounds, targets, args)
        finally:
            procs.stop()
            for log in root.glob("*.log"):
                shutil.copy(log, overhead.RESULTS / f"peers-{log.name}")
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": overhead.machine(),
        "rounds": args.rounds,
        "calls": args.calls,
        "sequential": args.sequential,
        "clients": args.clients,
        "unavailable": unavailable,
        "rows": summarise(targets),
        "raw": {t.label: t.rounds for t in targets},
    }
    (overhead.RESULTS / "peers.json").write_text(json.dumps(out, indent=2))
    text = report(out)
    (overhead.RESULTS / "peers.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
