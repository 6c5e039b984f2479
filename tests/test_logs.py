"""The process log of `mcp-gateway serve`: JSON lines off a terminal, each request's context on every line it logs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway import cli
from gateway.http.usage import PATH as USAGE
from gateway.logs import configure
from tests.replicas.support import READY_LINE
from tests.support.harness import STARTUP_TIMEOUT, connect, dynamic_manifest, free_port, running_gateway, write_config

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.speak"]}}}


def _open_session(config: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["sessions", "open", "--agent", "bot", "--config", str(config)]) == 0
    return out.getvalue().strip().splitlines()[-1]


async def _serve_and_call(tmp_path: Path) -> tuple[str, list[str]]:
    """Serve, make one tool call in each protocol era, stop; the token used and every stderr line."""
    port = free_port()
    # A per-session server is started by the session's first call: its "connected" line is logged mid-request.
    config = write_config(tmp_path, port, manifests=[dynamic_manifest(isolation="per_session")], agents=AGENTS)
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # not a terminal
    assert process.stderr is not None
    seen = b""
    try:
        with anyio.fail_after(STARTUP_TIMEOUT):
            async for chunk in process.stderr:
                seen += chunk
                if READY_LINE in seen:
                    break
        token = await anyio.to_thread.run_sync(_open_session, config)
        for mode in ("legacy", "auto"):
            async with connect(f"http://127.0.0.1:{port}/mcp", token, mode=mode) as client:
                assert not (await client.call_tool("dynamic__speak", {})).is_error
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            refused = await http.post("/mcp", json={}, headers={"Authorization": f"Bearer {token}x"})
            assert refused.status_code == 401
        process.terminate()
        with anyio.fail_after(20):
            async for chunk in process.stderr:
                seen += chunk
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
    return token, seen.decode().splitlines()


async def test_the_serve_log_is_json_lines_with_one_canonical_line_per_request_and_its_context_bound(tmp_path):
    token, lines = await _serve_and_call(tmp_path)
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "event", "logger"} <= r.keys() for r in records)
    requests = [r for r in records if r["logger"] == "gateway.request"]
    [refused] = [r for r in requests if r["status"] == 401]  # the tampered token: no agent, and not logged
    assert (refused["agent"], refused["sid"], refused["method"]) == (None, None, "POST")
    requests.remove(refused)
    sid = requests[0]["sid"]
    assert sid.startswith("s-")
    # Both eras' initialize, the call, ...: each request has its own line, id, status and duration.
    assert len(requests) >= 4 and len({r["request_id"] for r in requests}) == len(requests)
    assert all(
        r["event"] == "request"
        and r["level"] == "info"
        and r["agent"] == "bot"
        and r["sid"] == sid
        and r["method"] in ("POST", "GET", "DELETE")
        and r["path"] == "/mcp"
        and isinstance(r["status"], int)
        and 200 <= r["status"] < 300
        and r["duration_ms"] >= 0
        for r in requests
    )
    assert any(r["mcp_session"] for r in requests) and any(r["mcp_session"] is None for r in requests)
    # The session's server started during the first call: that line carries the call's request context.
    # (A per_session connection follows the era of the client that opened it: whichever era that was.)
    [connected] = [r for r in records if r["event"].startswith("upstream dynamic connected (") and "agent" in r]
    [during] = [r for r in requests if r["request_id"] == connected["request_id"]]
    assert (connected["agent"], connected["sid"], connected["mcp_session"]) == ("bot", sid, during["mcp_session"])
    # The startup lines, logged before any request, carry none.
    assert not any("request_id" in r for r in records[: records.index(connected)] if r["logger"] != "gateway.request")
    text = "\n".join(lines)
    assert token not in text and token.split(".")[2] not in text  # no bearer token, not even its signature


@given(st.text(), st.text())
def test_a_json_log_line_reads_back_to_exactly_the_values_logged(message: str, agent: str) -> None:
    stream = io.StringIO()  # not a terminal: JSON, whose own escaping is all there is
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stderr", stream)
            configure()
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id="r1", agent=agent)
            logging.getLogger("gateway.test").warning("%s", message)
    finally:
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["event"], record["agent"], record["request_id"]) == (message, agent, "r1")
    assert (record["level"], record["logger"]) == ("warning", "gateway.test")


async def test_a_request_starts_with_none_of_the_context_of_the_one_served_before_it_in_the_same_task(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.request")
    async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=AGENTS) as gw:
        token = await gw.open_session("bot")
        # In process, every request runs in this very task: whatever one binds, the next would find.
        transport = httpx.ASGITransport(app=gw.server.config.app)
        async with httpx.AsyncClient(transport=transport, base_url=gw.url) as http:
            await http.get(USAGE, headers={"Authorization": f"Bearer {token}"})
            assert (await http.get(USAGE, headers={"Authorization": "Bearer forged"})).status_code == 401
    first, second = [r for r in caplog.records if r.name == "gateway.request"]
    assert (first.agent, second.agent, second.sid, second.status) == ("bot", None, None, 401)
