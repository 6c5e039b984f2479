"""Where a tool call's cost goes, in instructions: deterministic, unlike CPU time on a shared 2-core box.

    .venv/bin/python benchmarks/breakdown.py [--calls 200] [--era 2025-11-25]
    .venv/bin/python benchmarks/breakdown.py --gateway-only [--baseline DIR --rounds 3] [--era 2025-11-25]
        [--upstream http]

Runs the gateway (and the SDK floors) under valgrind's callgrind, counting instructions
only while a client makes `--calls` sequential echo calls through /servers/everything/mcp
in the protocol era `--era` (2026-07-28 by default: sessionless, answered as JSON; 2025-11-25:
an initialized MCP session whose calls are answered on SSE streams, as a handshake-era client
sees it; the floors then answer on SSE too, without the gateway's resumability: no event store,
no priming event). Each stage's cost is what the count drops by when that stage is turned
into a no-op (`--without STAGE` runs the gateway with it stubbed out; see STUBS). The SDK
floors (its server answering an in-process echo; a bare SDK bridge to the same stdio server) are
printed beside the gateway for scale: the gateway's fast lane and its stdio pipes bypass most of both,
so what is left once the stages are stubbed out (the HTTP server, the edge, the lane, the pipeline, the
upstream pipes) is one row, the whole gateway minus its stages. With `--upstream http` the gateway-only calls go to
/servers/everything-http/mcp instead: server-everything over streamable HTTP (the handshake era, answers
on SSE). Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead

# The era's client mode (mcp.Client's `mode`) and the floor server's answer flag.
ERAS = {"2026-07-28": ("auto", ["--json"]), "2025-11-25": ("legacy", [])}

STUBS = {
    "audit": "gateway.audit.gateway_sink:GatewaySink.emit",
    "budgets": "gateway.spend.budgets:Budgets.reserve,gateway.spend.budgets:Budgets.settle",
    # both sides: the arguments' JSON text, its tokens (the config's estimator) and fingerprint; the result's
    "metering": "gateway.mcp.pipeline:canonical_json,gateway.spend.metering:Estimator.count,"
    "gateway.audit.records:Fingerprints.of_bytes,gateway.spend.metering:Meter.count,"
    "gateway.audit.records:Fingerprints.of",
    "session-read": "gateway.store.sqlite:SQLiteStore.get_session",
}


def stubbed_gateway(stages: list[str]) -> list[str]:
    """A `python -c` program that runs the gateway with the named stages turned into no-ops."""
    lines = ["import sys, importlib, functools"]
    for stage in stages:
        for target in STUBS[stage].split(","):
            module, _, attr = target.partition(":")
            owner, _, name = attr.rpartition(".")  # "Class.method", or a module's own function
            lines.append(f"_c = importlib.import_module({module!r})" + (f".{owner}" if owner else ""))
            if stage == "session-read":  # read once, then reuse: what remains is the cost of the statement
                lines.append(
                    f"_o = _c.{name}\n_m = {{}}\n"
                    f"async def _r(self, sid):\n"
                    f"    if sid not in _m: _m[sid] = await _o(self, sid)\n    return _m[sid]\n"
                    f"_c.{name} = _r"
                )
            elif stage == "metering":  # counts are 0, texts and fingerprints "x"
                lines.append(f"_c.{name} = lambda *a: {0 if name == 'count' else repr('x')}")
            else:
                lines.append(f"async def _n(self, *a, **k): return {{}}\n_c.{name} = _n")
    lines.append("from gateway.cli import main\nsys.exit(main(sys.argv[1:]))")
    return ["-c", "\n".join(lines)]


async def count(
    program: list[str],
    url_path: str,
    config: Path | None,
    port: int,
    calls: int,
    source: Path = overhead.REPO,
    era: str = "2026-07-28",
) -> float:
    """Instructions per call of the server `program` runs (in the source tree `source`), while `calls` echo
    calls are made in the protocol era `era`."""
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable, *program],
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # startup under valgrind takes a while; this script may wait for it, the tests may not
        if config is None:
            overhead.wait_port(port, server, timeout=600)
            token = "unused"
        else:
            overhead.wait_ready(f"http://127.0.0.1:{port}", server, timeout=600)
            token = overhead.open_session(config)
        connect = overhead.via_gateway(f"http://127.0.0.1:{port}{url_path}", token, ERAS[era][0])
        async with connect() as call:
            for _ in range(30):  # warm caches and lazily built validators first
                await call()
            subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
            for _ in range(calls):
                await call()
            subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
    finally:
        server.send_signal(2)
        server.wait(120)
    total = 0
    for path in glob.glob(f"{out}*"):
        for line in Path(path).read_text(errors="replace").splitlines():
            if match := re.match(r"(?:summary|totals): (\d+)", line):
                total = max(total, int(match.group(1)))
    return total / calls


@contextlib.contextmanager
def everything_http(upstream: str) -> Iterator[str | None]:
    """With `upstream` "http", server-everything over streamable HTTP on a free loopback port (its /mcp URL)."""
    if upstream != "http":
        yield None
        return
    port = overhead.free_port()
    preload = overhead.REPO / "tests" / "support" / "loopback-preload.cjs"
    process = subprocess.Popen(
        ["node", "-r", str(preload), str(overhead.EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        overhead.wait_port(port, process, what="server-everything over HTTP")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(30)


async def gateway_only(calls: int, baseline: Path | None, rounds: int, era: str, upstream: str) -> None:
    """The whole gateway's instructions per call, nothing stubbed: a quick before/after of one change.

    With `baseline` (a source tree, e.g. `git archive <commit> | tar -x -C DIR`), this tree and that one run
    in turn `rounds` times and the medians are compared: on a shared machine the count moves by several
    percent with the load (the event loop wakes more often), so one run of each is not enough.
    """
    sources = {"gateway": overhead.REPO, **({"baseline": baseline} if baseline is not None else {})}
    counts: dict[str, list[float]] = {label: [] for label in sources}
    path = "/servers/everything-http/mcp" if upstream == "http" else "/servers/everything/mcp"
    with everything_http(upstream) as url:
        for _ in range(rounds):
            for label, source in sources.items():
                with tempfile.TemporaryDirectory() as tmp:
                    port = overhead.free_port()
                    config = overhead.write_config(Path(tmp), port, unsandboxed=True, http_upstream=url)
                    program = [*stubbed_gateway([]), "serve", "--config", str(config), "--log-level", "WARNING"]
                    total = await count(program, path, config, port, calls, source, era)
                counts[label].append(total)
                print(f"{label}: {total / 1e6:.2f} Minstr/tools/call ({calls} calls)")
    if baseline is not None or rounds > 1:
        medians = {label: statistics.median(values) for label, values in counts.items()}
        print(", ".join(f"{label} median {value / 1e6:.2f}" for label, value in medians.items()))
        if baseline is not None:
            print(f"gateway / baseline: {medians['gateway'] / medians['baseline']:.3f}")


async def measure(calls: int, era: str) -> None:
    floor = overhead.REPO / "benchmarks" / "floor.py"
    answer = ERAS[era][1]
    rows: dict[str, float] = {}
    for label, flags in (("SDK server, echo in process", answer), ("SDK bridge to stdio", ["--bridge", *answer])):
        port = overhead.free_port()
        rows[label] = await count([str(floor), "--port", str(port), *flags], "/mcp", None, port, calls, era=era)
    for stages in ([], *([s] for s in STUBS)):
        with tempfile.TemporaryDirectory() as tmp:
            port = overhead.free_port()
            config = overhead.write_config(Path(tmp), port, unsandboxed=True)
            program = [*stubbed_gateway(stages), "serve", "--config", str(config), "--log-level", "WARNING"]
            label = "gateway" if not stages else f"gateway without {stages[0]}"
            rows[label] = await count(program, "/servers/everything/mcp", config, port, calls, era=era)
    total = rows["gateway"]
    parts = {stage: total - rows[f"gateway without {stage}"] for stage in STUBS}
    parts["the rest: HTTP server, edge, grant, fast lane, pipeline, upstream pipes"] = total - sum(parts.values())
    print(f"instructions per tools/call, {era} ({calls} calls each; millions)\n")
    print("| run | Minstr/call |\n|---|---|")
    for label, value in rows.items():
        print(f"| {label} | {value / 1e6:.2f} |")
    print("\n| stage | Minstr/call | share of the gateway |\n|---|---|---|")
    for label, value in parts.items():
        print(f"| {label} | {value / 1e6:.2f} | {value / total:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--gateway-only", action="store_true", help="only the whole gateway, no stages or floors")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="with --gateway-only: also this source tree")
    parser.add_argument("--rounds", type=int, default=1, help="with --gateway-only: runs of each tree, in turn")
    parser.add_argument("--era", choices=ERAS, default="2026-07-28", help="the clients' protocol era")
    parser.add_argument(
        "--upstream", choices=["stdio", "http"], default="stdio", help="with --gateway-only: server-everything's"
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = parser.parse_args()
    if args.gateway_only:
        anyio.run(gateway_only, args.calls, args.baseline, args.rounds, args.era, args.upstream)
    else:
        anyio.run(measure, args.calls, args.era)
