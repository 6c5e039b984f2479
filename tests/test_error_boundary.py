"""The one error boundary: each exception answers with the JSON-RPC error the Errors table gives it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.errors import (
    AuditUnavailable,
    AuthError,
    ConfigError,
    CredentialShared,
    ResourceNotFound,
    Stopped,
    StoreUnavailable,
    UnknownPrompt,
    UnknownTool,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.mcp.server import map_errors

MODERN, HANDSHAKE = "2026-07-28", "2025-11-25"


def answer(exc: Exception, version: str = MODERN, session_ended: Any = None) -> MCPError:
    async def raise_it() -> None:
        async with map_errors(version == MODERN, session_ended):
            raise exc

    with pytest.raises(MCPError) as caught:
        anyio.run(raise_it)
    return caught.value


def test_each_refusal_answers_with_its_code_message_and_data() -> None:
    stop = Stopped("session_calls", "STOP: the session's calls are used up", {"limit": "session_calls"})
    cases: list[tuple[Exception, int, str, Any]] = [
        (stop, -32010, "STOP: the session's calls are used up", {"gateway/stop": {"limit": "session_calls"}}),
        (StoreUnavailable("db down"), -32011, "Service unavailable, nothing was forwarded: db down", None),
        (AuditUnavailable("disk full"), -32011, "Service unavailable, nothing was forwarded: disk full", None),
        (CredentialShared(), -32012, "Refused: this agent's credential is in use by more clients", None),
        (AuthError("revoked"), -32014, "The session has ended (revoked); nothing more is forwarded", None),
        (UnknownTool("git__x"), -32602, "Unknown tool: git__x", None),
        (UnknownPrompt("p"), -32602, "Unknown prompt: p", None),
        (ResourceNotFound("file:///x"), -32602, "Resource not found: file:///x", {"uri": "file:///x"}),
    ]
    for exc, code, message, data in cases:
        error = answer(exc)
        assert (error.code, error.error.data) == (code, data), exc
        assert error.message.startswith(message), error.message


def test_a_resource_not_found_keeps_the_handshake_eras_own_code() -> None:
    assert answer(ResourceNotFound("file:///x"), HANDSHAKE).code == -32002
    assert answer(UnknownPrompt("p"), HANDSHAKE).code == -32602  # only resources changed code between the eras


def test_an_upstream_failure_names_its_server_and_never_its_detail() -> None:
    down = UpstreamError("upstream server 'git' is unavailable: /srv/secret/path: No such file")
    down.server = "git"
    error = answer(down)
    assert (error.code, error.message) == (-32603, "The tool server 'git' is unavailable; the call was not completed.")
    slow = UpstreamTimeout("upstream server 'git' did not answer within 2s", seconds=2.0)
    slow.server = "git"
    assert answer(slow).message == "The tool server 'git' did not answer within 2s; the call was not completed."


def test_an_ended_session_is_acted_on_before_it_is_answered() -> None:
    ended: list[str] = []

    async def session_ended() -> None:
        ended.append("ended")

    assert answer(AuthError("revoked"), session_ended=session_ended).code == -32014
    assert ended == ["ended"]
    answer(UnknownTool("x"), session_ended=session_ended)
    assert ended == ["ended"]  # only an ended session


def test_errors_that_are_no_agents_answer_and_mcp_errors_pass_through() -> None:
    async def raise_it(exc: Exception) -> None:
        async with map_errors(modern=True):
            raise exc

    with pytest.raises(ConfigError):
        anyio.run(raise_it, ConfigError("bad file"))
    upstreams_own = MCPError(-32001, "the upstream's own answer")
    with pytest.raises(MCPError) as caught:
        anyio.run(raise_it, upstreams_own)
    assert caught.value is upstreams_own
