"""What OpenTelemetry costs per tool call: the gateway's own CPU with telemetry off and on.

    .venv/bin/python benchmarks/telemetry.py [--calls 500] [--rounds 2] [--baseline DIR]

Runs the gateway of benchmarks/overhead.py (every control on, server-everything's echo over
/servers/everything/mcp, 2026-07-28) as its own process, once without telemetry and once
exporting spans and metrics over OTLP/HTTP to a receiver in this process, alternating `--rounds` times,
and reports the gateway process's CPU time per call (its counters only) for each, plus the
spans the receiver decoded. With --baseline, a third run per round serves the gateway from the
source tree DIR (e.g. `git archive <commit> | tar -x -C DIR` of the code before telemetry), to
show that "off" costs what the gateway cost before. `--log-level INFO` keeps the canonical request line
(one per request, written to a file). Needs the `otel` and `test` extras.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # a sibling script, not a package


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, list[int]]]:
    """An OTLP/HTTP receiver (traces counted, metrics accepted) on a free port; yields its URL and the span count."""
    count = [0]

    async def export(request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        count[0] += sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        return Response(b"", media_type="application/x-protobuf")

    port = overhead.free_port()

    async def metrics(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(
        routes=[Route("/v1/traces", export, methods=["POST"]), Route("/v1/metrics", metrics, methods=["POST"])]
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", count
        server.should_exit = True


async def one_run(endpoint: str | None, args: argparse.Namespace, source: Path = overhead.REPO) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = overhead.free_port()
        config = overhead.write_config(Path(tmp), port)
        if endpoint is not None:
            settings = yaml.safe_load(config.read_text())
            config.write_text(yaml.safe_dump({**settings, "telemetry": {"otlp_endpoint": endpoint}}))
        log = (Path(tmp) / "gateway.log").open("wb")  # the process log, JSON lines to a file as under a supervisor
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", args.log_level],
            cwd=source,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            await anyio.to_thread.run_sync(overhead.wait_ready, url, process)
            token = await anyio.to_thread.run_sync(overhead.open_session, config)
            connect = overhead.via_gateway(f"{url}/servers/everything/mcp", token, "auto")
            async with connect() as call:  # warm up: connections, caches
                for _ in range(50):
                    await call()
            return await overhead.cpu_run(str(source), overhead.gateway_process(process), connect, args)
        finally:
            process.send_signal(2)
            await anyio.to_thread.run_sync(process.wait, 30)
            log.close()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    modes = ["off", "on", *(["baseline"] if args.baseline else [])]
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    async with receiver() as (endpoint, spans):
        for _ in range(args.rounds):
            for mode in modes:
                source = args.baseline if mode == "baseline" else overhead.REPO
                result = await one_run(endpoint if mode == "on" else None, args, source)
                runs[mode].append(result["cpu_ms_per_call"])
    medians = {mode: round(statistics.median(values), 3) for mode, values in runs.items()}
    return {
        "calls_per_run": args.calls,
        "clients": args.clients,
        "cpu_ms_per_call": runs,
        "median_ms": medians,
        "on_minus_off_ms": round(medians["on"] - medians["off"], 3),
        "spans_received": spans[0],
        "machine": overhead.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per measured run (default %(default)s)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs to run (default %(default)s)")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's --log-level (INFO: a line per request)")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also run the gateway from this source tree")
    print(json.dumps(anyio.run(measure, parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
