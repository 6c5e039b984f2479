"""Every forwarded request is recorded before it leaves and closed by exactly one outcome record.

resources/read, prompts/get and completion/complete are admitted like tools/call (grant, stop check, a durable
record, metering); a call the client cancels, a session's end cuts, or a crash interrupts still gets its outcome.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway import cli
from gateway.errors import AuthError
from gateway.mcp.views import View
from tests.audit.test_audit_gateway import _point_at_a_full_disk
from tests.replicas.support import READY_LINE, audit_records
from tests.support.harness import (
    STARTUP_TIMEOUT,
    Harness,
    connect,
    everything_stdio_manifest,
    free_port,
    running_gateway,
    write_config,
)

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["legacy", "auto"])
DOCUMENT = "everything+demo://resource/static/document/architecture.md"
LONG = "everything__trigger-long-running-operation"
AGENTS = {
    "full-bot": {
        "owner": "ops@example.com",
        "grant": {"tools": ["everything.*"], "resources": ["everything"], "prompts": ["everything"]},
    },
    "capped-bot": {
        "owner": "ops@example.com",
        "grant": {
            "tools": ["everything.echo"],
            "resources": ["everything"],
            "prompts": ["everything"],
            "budget": {"session_calls": 1},
        },
    },
}
PAIRS = (
    ("resource.read", "resource.result"),
    ("prompt.get", "prompt.result"),
    ("completion.complete", "completion.result"),
)


class Written:
    """Wakes a test when the gateway writes an audit record: the sink's own emit, observed, then checked."""

    def __init__(self, gw: Harness) -> None:
        self.gw = gw
        self.changed = anyio.Event()
        emit = gw.gateway.audit.emit

        async def observed(event: str, **fields: Any) -> dict[str, Any]:
            try:
                return await emit(event, **fields)
            finally:
                self.changed.set()
                self.changed = anyio.Event()

        gw.gateway.audit.emit = observed  # type: ignore[method-assign]

    async def until(self, event: str, **match: Any) -> dict[str, Any]:
        with anyio.fail_after(20):
            while True:
                changed = self.changed
                found = [r for r in self.gw.audit(event) if all(r.get(k) == v for k, v in match.items())]
                if found:
                    return found[-1]
                await changed.wait()


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_gateway(
        tmp_path_factory.mktemp("outcomes"), manifests=[everything_stdio_manifest()], agents=AGENTS
    ) as gw:
        gw.written = Written(gw)  # type: ignore[attr-defined]
        yield gw


def written(gw: Harness) -> Written:
    return gw.written  # type: ignore[attr-defined,no-any-return]


async def session_of(gw: Harness, agent: str = "full-bot") -> tuple[str, str]:
    session, token = await gw.gateway.sessions.open(agent, via="test")
    return session.sid, token


def records_of(gw: Harness, sid: str, *events: str) -> list[dict[str, Any]]:
    return [r for r in gw.audit() if r.get("session") == sid and (not events or r["event"] in events)]


async def complete_department(client: Client) -> types.CompleteResult:
    return await client.session.complete(
        types.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
        {"name": "department", "value": "Eng"},
    )


# ------------------------------------------------------------------ finding 5: every forwarded method


@MODES
async def test_reads_prompts_and_completions_are_recorded_before_forwarding_and_closed_by_one_outcome(
    gw: Harness, mode: str
) -> None:
    sid, token = await session_of(gw)
    async with gw.client(token, mode=mode) as client:
        await client.read_resource(DOCUMENT)
        await client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
        assert (await complete_department(client)).completion.values == ["Engineering"]
    outcomes = []
    for before, after in PAIRS:
        [admitted] = records_of(gw, sid, before)
        [outcome] = records_of(gw, sid, after)
        assert admitted["decision"] == "allow" and admitted["server"] == "everything", before
        assert outcome["call_id"] == admitted["call_id"] and outcome["seq"] > admitted["seq"], after
        assert outcome["outcome"] == "ok" and outcome["response_tokens"] > 0, after
        outcomes.append(outcome)
    session = await gw.gateway.store.get_session(sid)
    assert session is not None  # every metered payload was counted against the budget
    assert session.tokens == sum(r["request_tokens"] + r["response_tokens"] for r in outcomes)


async def test_an_upstream_error_on_a_read_or_a_prompt_is_recorded_with_the_error(gw: Harness) -> None:
    sid, token = await session_of(gw)
    async with gw.client(token, mode="legacy") as client:
        with pytest.raises(MCPError, match="Resource not found"):
            await client.read_resource("everything+demo://resource/static/document/no-such-document.md")
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("everything__args-prompt", {})  # its required argument is missing
    [read] = records_of(gw, sid, "resource.result")
    [prompt] = records_of(gw, sid, "prompt.result")
    assert read["outcome"] == "error" and read["error"]
    assert prompt["outcome"] == "error" and prompt["error"] == refused.value.message
    assert [r["decision"] for r in records_of(gw, sid, "resource.read", "prompt.get")] == ["allow", "allow"]


async def test_no_read_prompt_or_completion_is_forwarded_when_its_record_cannot_be_written(gw: Harness) -> None:
    """The sink fails without knowing yet (the edge's probe finds nothing): the durable record refuses it."""
    sid, token = await session_of(gw)
    asks: list[Callable[[Client], Any]] = [
        lambda client: client.read_resource(DOCUMENT),
        lambda client: client.get_prompt("everything__simple-prompt"),
        complete_department,
    ]
    async with gw.client(token, mode="legacy") as client, gw.http() as http:
        for ask in asks:
            restore = _point_at_a_full_disk(gw.gateway.config.audit.path)
            try:
                with pytest.raises(MCPError) as refused:
                    await ask(client)
            finally:
                restore()
            assert refused.value.code == -32011 and "nothing was forwarded" in refused.value.message
            assert (await http.get("/readyz")).status_code == 200  # the sink recovers before the next one
    assert records_of(gw, sid, *(event for pair in PAIRS for event in pair)) == []


async def test_a_stopped_session_is_refused_completions_with_the_stop_error_and_a_record(gw: Harness) -> None:
    sid, token = await session_of(gw, "capped-bot")
    async with gw.client(token, mode="legacy") as client:
        assert not (await client.call_tool("everything__echo", {"message": "one"})).is_error
        assert (await client.call_tool("everything__echo", {"message": "two"})).is_error  # stopped: 1 call
        with pytest.raises(MCPError) as stopped:
            await complete_department(client)
    assert stopped.value.code == -32010 and "STOP" in stopped.value.message
    [denied] = records_of(gw, sid, "completion.complete")
    assert denied["decision"] == "deny" and denied["reason"] == "session_calls"
    assert records_of(gw, sid, "completion.result") == []


# ------------------------------------------------------------------ finding 12: cancelled, revoked, interrupted


async def test_a_call_the_client_cancels_gets_exactly_one_cancelled_outcome(gw: Harness) -> None:
    sid, token = await session_of(gw)
    progressed = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    async with gw.client(token, mode="legacy") as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: client.session.call_tool(LONG, {"duration": 30, "steps": 30}, progress_callback=on_progress)
            )
            with anyio.fail_after(20):
                await progressed.wait()
            tg.cancel_scope.cancel()  # the SDK client sends notifications/cancelled
        [call] = records_of(gw, sid, "tool.call")
        outcome = await written(gw).until("tool.result", call_id=call["call_id"])
        assert (await client.call_tool("everything__echo", {"message": "still here"})).content[0].text
    assert outcome["outcome"] == "cancelled" and call["decision"] == "allow"
    assert len([r for r in records_of(gw, sid, "tool.result") if r["call_id"] == call["call_id"]]) == 1


@MODES
async def test_a_call_cut_by_revocation_records_revoked_and_a_waiting_answer_is_the_401(gw: Harness, mode: str) -> None:
    sid, token = await session_of(gw)
    answers: list[httpx2.Response] = []

    async def seen(response: httpx2.Response) -> None:
        answers.append(response)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=30, event_hooks={"response": [seen]}
    )
    failure: list[BaseException] = []
    async with http:
        with contextlib.suppress(BaseException):
            async with Client(streamable_http_client(gw.mcp_url, http_client=http), mode=mode) as client:

                async def call() -> None:
                    try:
                        await client.call_tool(LONG, {"duration": 30, "steps": 30})
                    except Exception as exc:
                        failure.append(exc)
                        raise

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    call_record = await written(gw).until("tool.call", session=sid)
                    await gw.gateway.operations("test").end_session(sid, "revoked")
    outcome = await written(gw).until("tool.result", call_id=call_record["call_id"])
    assert outcome["outcome"] == "revoked" and failure
    assert len([r for r in records_of(gw, sid, "tool.result")]) == 1
    if mode == "auto":  # a 2026-07-28 call waits for its JSON answer: it gets the Errors table's 401
        posts = [r for r in answers if r.request.method == "POST"]
        assert posts[-1].status_code == 401, [r.status_code for r in answers]
        assert posts[-1].headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_a_call_racing_a_revoke_is_refused_as_an_ended_session_with_a_deny_record(gw: Harness) -> None:
    """Another process ends the session between this request's authentication and its admission."""
    sid, token = await session_of(gw)
    principal = await gw.gateway.sessions.authenticate(token)
    await gw.gateway.store.end_session(sid, "revoked", "revoked", gw.clock())
    view = View(gw.gateway.upstreams, gw.gateway.names, None)
    with pytest.raises(AuthError):
        await gw.gateway.pipeline.call_tool(view, principal, "everything__echo", {"message": "x"}, {}, _Unreached(sid))
    [denied] = records_of(gw, sid, "tool.call")
    assert denied["decision"] == "deny" and denied["reason"] == "session_ended"


class _Unreached:
    """The downstream of a call refused before anything is forwarded: never asked anything."""

    def __init__(self, sid: str) -> None:
        self.sid = sid

    async def ask(self, request: Any, key: str | None = None) -> Any:
        raise AssertionError("a refused call asked its agent")

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        raise AssertionError("a refused call reported progress")

    async def log(self, params: Any) -> None:
        raise AssertionError("a refused call logged")


@contextlib.asynccontextmanager
async def serving(config: Path) -> AsyncIterator[anyio.abc.Process]:
    """`mcp-gateway serve` in its own process, ready once uvicorn says so; killed at exit if still running."""
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(STARTUP_TIMEOUT):
            async for chunk in process.stderr:
                seen += chunk
                if READY_LINE in seen:
                    break
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def test_after_a_crash_the_restart_records_interrupted_outcomes(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, manifests=[everything_stdio_manifest()], agents=AGENTS)
    audit = tmp_path / "state" / "audit.jsonl"
    async with serving(config) as process:
        token = await anyio.to_thread.run_sync(_open_session, config)
        progressed = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            progressed.set()

        with contextlib.suppress(BaseException):
            async with connect(f"http://127.0.0.1:{port}/mcp", token, mode="legacy") as client:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: client.session.call_tool(
                            LONG, {"duration": 30, "steps": 30}, progress_callback=on_progress
                        )
                    )
                    with anyio.fail_after(20):
                        await progressed.wait()
                    process.kill()  # SIGKILL: no shutdown, no outcome record
                    await process.wait()
    [call] = audit_records(audit, "tool.call")
    assert call["decision"] == "allow" and audit_records(audit, "tool.result") == []
    async with serving(config) as process:
        [interrupted] = audit_records(audit, "tool.result")
        process.terminate()
        await process.wait()
    assert interrupted["call_id"] == call["call_id"] and interrupted["outcome"] == "interrupted"
    assert interrupted["session"] == call["session"] and interrupted["tool"] == "trigger-long-running-operation"
    started = [r["seq"] for r in audit_records(audit, "gateway.started")]
    assert started[0] < interrupted["seq"] < started[1]  # written by the restart, before it serves
    async with serving(config) as process:  # a second restart finds nothing left open
        process.terminate()
        await process.wait()
    assert len(audit_records(audit, "tool.result")) == 1


def _open_session(config: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["sessions", "open", "--agent", "full-bot", "--config", str(config)]) == 0
    return out.getvalue().strip().splitlines()[-1]
