"""The HTTP server's bounds (gateway.yaml `http`): a request head that never finishes is cut, an idle keep-alive
connection is closed, and connections beyond the cap are answered 503 (issue 12, finding 14)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.files import GatewayConfig
from tests.support.harness import Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the head is never finished


IMPLEMENTATIONS = pytest.mark.parametrize("fast", [False, True], ids=["h11", "httptools"])


@contextlib.asynccontextmanager
async def gateway(root: Path, fast: bool, **http: object) -> AsyncIterator[Harness]:
    """A gateway on uvicorn's h11 (`fast` False) or httptools implementation, with these `http` settings."""
    if fast:
        pytest.importorskip("httptools")
    async with running_gateway(root, manifests=[time_manifest()], extra={"http": http}, fast=fast) as gw:
        yield gw


async def closed_by_server(stream: anyio.abc.SocketStream, within: float) -> float:
    """Seconds until the server closes `stream` (reads nothing but the end), failing after `within`."""
    started = time.monotonic()
    with anyio.fail_after(within):
        while True:
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return time.monotonic() - started


@IMPLEMENTATIONS
async def test_a_request_head_that_never_finishes_is_closed_after_the_header_timeout(
    tmp_path: Path, fast: bool
) -> None:
    async with gateway(tmp_path, fast, header_timeout="1s", keep_alive="30s") as gw:
        await _half_heads_are_cut(gw)


async def _half_heads_are_cut(gw: Harness) -> None:
    async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
        await stream.send(HEAD)
        assert 0.5 < await closed_by_server(stream, 10) < 5

    # Also on a kept-alive connection: a full request is answered, then half of the next one is cut.
    async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
        await stream.send(HEAD + b"\r\n")
        assert (await stream.receive()).startswith(b"HTTP/1.1 200")
        await stream.send(HEAD)
        await closed_by_server(stream, 10)

    # A connection that opens and sends nothing is cut too.
    async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
        await closed_by_server(stream, 10)


@IMPLEMENTATIONS
async def test_a_request_head_larger_than_16_kib_is_refused_by_either_http_implementation(
    tmp_path: Path, fast: bool
) -> None:
    async with gateway(tmp_path, fast, header_timeout="60s") as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            with contextlib.suppress(anyio.BrokenResourceError):  # the server may close while we still send
                await stream.send(HEAD + b"X-Padding: " + b"a" * 64 * 1024 + b"\r\n")
            assert await closed_by_server(stream, 10) < 10
        async with gw.http() as http:  # the gateway keeps serving
            assert (await http.get("/healthz")).status_code == 200


@IMPLEMENTATIONS
async def test_connections_beyond_max_connections_are_answered_503(tmp_path: Path, fast: bool) -> None:
    async with gateway(tmp_path, fast, max_connections=3) as gw, contextlib.AsyncExitStack() as stack:
        with anyio.fail_after(10):
            for _ in range(3):  # three served connections, each left open on keep-alive
                held = await stack.enter_async_context(await anyio.connect_tcp("127.0.0.1", gw.port))
                await held.send(HEAD + b"\r\n")
                assert (await held.receive()).startswith(b"HTTP/1.1 200")
            async with await anyio.connect_tcp("127.0.0.1", gw.port) as fourth:
                await fourth.send(HEAD + b"\r\n")
                assert (await fourth.receive()).startswith(b"HTTP/1.1 503")
            await stack.aclose()
            async with gw.http() as http:  # once they are gone, requests are served again
                assert (await http.get("/healthz")).status_code == 200


@settings(deadline=None)
@given(seconds=st.floats(-5, 5, allow_nan=False), connections=st.integers(-2, 5))
def test_http_bounds_must_be_positive(seconds: float, connections: int) -> None:
    raw = {
        "public_url": "http://127.0.0.1:1",
        "http": {"keep_alive": seconds, "header_timeout": seconds, "max_connections": connections},
    }
    if seconds > 0 and connections > 0:
        http = GatewayConfig.model_validate(raw).http
        assert (http.keep_alive, http.header_timeout, http.max_connections) == (seconds, seconds, connections)
    else:
        with pytest.raises(ValueError, match="http"):
            GatewayConfig.model_validate(raw)


def test_http_bounds_default_to_5s_keep_alive_10s_header_timeout_and_1000_connections() -> None:
    http = GatewayConfig.model_validate({"public_url": "http://127.0.0.1:1"}).http
    assert (http.keep_alive, http.header_timeout, http.max_connections) == (5.0, 10.0, 1000)


@IMPLEMENTATIONS
async def test_an_oversized_body_is_answered_413_and_its_bytes_never_count_as_a_request_head(
    tmp_path: Path, fast: bool
) -> None:
    """Regression: the head-size guard counted the rest of a body the app had already refused, and cut the
    connection before the client could read the 413."""
    async with gateway(tmp_path, fast) as gw:
        token = await gw.open_session("alice-bot")
        headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
        }
        async with gw.http() as http:
            huge = await http.post("/mcp", headers=headers, content=b"{" + b" " * (5 * 1024 * 1024) + b"}")
            assert huge.status_code == 413
            assert (await http.get("/healthz")).status_code == 200


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    ("http", "recorded"),
    [({}, "127.0.0.1"), ({"trusted_proxies": []}, "127.0.0.1"), ({"trusted_proxies": ["127.0.0.0/8"]}, "203.0.113.66")],
    ids=["default", "none", "loopback"],
)
async def test_a_forwarded_client_address_is_believed_only_from_a_trusted_proxy(
    tmp_path: Path, fast: bool, http: dict[str, list[str]], recorded: str
) -> None:
    """Regression: uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so any client on the
    gateway's host could write the address of its choice into every audit record of its calls."""
    async with gateway(tmp_path, fast, **http) as gw:
        token = await gw.open_session("alice-bot")
        async with gw.client(token, headers={"X-Forwarded-For": "203.0.113.66"}) as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        assert {r["remote_addr"] for r in gw.audit("tool.call") + gw.audit("tool.result")} == {recorded}
