"""Each control's own cost, in instructions, measured in process one control at a time.

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python benchmarks/controls.py --callgrind /tmp/cg.out [--calls 150] [--only edge,reserve]
    .venv/bin/python benchmarks/controls.py [--calls 2000]      # CPU time instead (quick, noisy)

breakdown.py's stage table stubs a stage out of a whole gateway and subtracts two noisy runs;
at a few hundred thousand instructions a stage, that difference is often smaller than the noise
of the event loop under load. Here a gateway runs in this process (tests/support/harness.py)
and each control is called directly in a loop, as a tools/call calls it: the edge (Host, the
token from its cache, the session read, the binding; in front of an app that answers at once),
the reservation, the durable tool.call record, the settlement and the tool.result record.
Under callgrind only the loop is counted (`callgrind_control` switches counting on around it),
background tasks included: the audit flusher's fsyncs belong to the records that cause them. The
durable record's count depends on the disk: while fsyncs take under 2 ms it fsyncs on the event
loop, else through the flusher's worker thread, which costs several hundred thousand more.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.audit.events import Event
from gateway.http.edge import AuthFailures, Edge
from tests.support.harness import running_gateway, time_manifest

AGENTS = {
    "bench-bot": {
        "owner": "bench@example.com",
        "grant": {
            "tools": ["time.*"],
            "budget": {"session_calls": 10_000_000, "session_tokens": 10_000_000_000, "session_ttl": "8h"},
        },
    }
}


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


def _dumped(out: str) -> int:
    """The instructions in the newest dump of `out`."""
    newest = max(glob.glob(f"{out}*"), key=os.path.getmtime)
    counts = [int(m.group(1)) for line in open(newest, errors="replace") if (m := re.match(r"totals: (\d+)", line))]
    return max(counts, default=0)


async def measure(calls: int, only: set[str] | None, callgrind: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_gateway(Path(tmp), manifests=[time_manifest(sandbox="off")], agents=AGENTS) as gw:
            g = gw.gateway
            token = await gw.open_session("bench-bot")

            async def answered(scope: Any, receive: Any, send: Any) -> None:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def discard(message: Any) -> None:
                return None

            async def unrouted(*args: Any) -> None:
                raise AssertionError("the edge did not take the request")

            path = "/servers/time/mcp"
            edge = Edge(
                g.config,
                sessions=g.sessions,
                tokens=g.tokens,
                dpop=g.dpop,
                audit=g.audit,
                fanout=g.fanout,
                failures=AuthFailures(g.audit),
                apps={path: answered},
            )
            headers = [
                (b"host", f"127.0.0.1:{gw.port}".encode()),
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
                (b"mcp-protocol-version", b"2026-07-28"),
                (b"mcp-method", b"tools/call"),
                (b"mcp-name", b"echo"),
            ]
            principal = await g.sessions.authenticate(token)
            fingerprint = g.fingerprints.of_bytes(b'{"message":"benchmark"}')
            fields = {
                **principal.audit_fields(),
                "protocol_version": "2026-07-28",
                "client": "mcp",
                "call_id": secrets.token_hex(8),
                "server": "time",
                "server_owner": "platform@example.com",
                "tool": "echo",
            }

            async def edge_call() -> None:
                scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": ("127.0.0.1", 1)}
                await edge.serve(scope, receive, discard, unrouted)

            async def reserve() -> None:
                await g.budgets.reserve(principal, "time.echo", 3, fingerprint)

            async def durable() -> None:
                await g.audit.emit(
                    Event.TOOL_CALL, durable=True, **fields, decision="allow", reason="granted", request_tokens=3
                )

            async def settle() -> None:
                await g.budgets.settle(principal, 20, call_id=secrets.token_hex(8))

            async def result() -> None:
                await g.audit.emit(
                    Event.TOOL_RESULT, **fields, outcome="ok", request_tokens=3, response_tokens=20, latency_ms=1.0
                )

            controls: dict[str, Callable[[], Awaitable[None]]] = {
                "edge": edge_call,
                "reserve": reserve,
                "durable": durable,
                "settle": settle,
                "result": result,
            }
            for name, control in controls.items():
                if only is not None and name not in only:
                    continue
                for _ in range(min(calls, 200)):  # warm caches and lazily built state first
                    await control()
                if callgrind is not None:
                    _callgrind("-z")
                    _callgrind("-i", "on")
                started = time.process_time()
                for _ in range(calls):
                    await control()
                cpu = time.process_time() - started
                if callgrind is not None:
                    _callgrind("-i", "off")
                    _callgrind("-d")
                    print(f"| {name} | {_dumped(callgrind) / calls / 1e3:.1f} k instructions |")
                else:
                    print(f"| {name} | {cpu / calls * 1e6:.1f} µs CPU |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--only", help="comma-separated controls: edge, reserve, durable, settle, result")
    parser.add_argument("--callgrind", metavar="OUT", help="the --callgrind-out-file valgrind was given")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    anyio.run(measure, args.calls, only, args.callgrind)
