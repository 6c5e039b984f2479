"""One agent credential used from more distinct clients than configured is recorded, and optionally blocked."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from gateway.config.files import SharedCredentials
from gateway.identity.shared import SharedCredentialDetector
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio


def _info(name: str) -> types.Implementation:
    return types.Implementation(name=name, version="1.0")


async def test_a_credential_used_by_too_many_clients_is_recorded_and_not_blocked_by_default(tmp_path):
    extra = {"shared_credentials": {"max_fingerprints": 1, "window": "5m"}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], extra=extra) as gw:
        token = await gw.open_session("alice-bot")
        async with gw.client(token, client_info=_info("ide-one")) as first:
            await first.list_tools()
            async with gw.client(token, client_info=_info("ide-two")) as second:
                assert (await second.list_tools()).tools  # recorded, still served
        record = gw.audit("credential.shared_suspected")[0]
        assert record["agent"] == "alice-bot" and record["client"] == "ide-two"
        assert record["remote_addr"] == "127.0.0.1" and record["blocked"] is False


async def test_with_block_the_extra_client_is_refused_and_the_first_keeps_working(tmp_path):
    extra = {"shared_credentials": {"max_fingerprints": 1, "window": "5m", "block": True}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], extra=extra) as gw:
        token = await gw.open_session("alice-bot")
        async with gw.client(token, client_info=_info("ide-one")) as first:
            await first.list_tools()
            with pytest.raises(Exception) as refused:  # the handshake itself is refused
                async with gw.client(token, client_info=_info("ide-two")) as second:
                    await second.list_tools()
            assert any(
                isinstance(e, MCPError) and "credential is in use by more clients" in str(e)
                for e in _leaves(refused.value)
            )
            assert (await first.list_tools()).tools
        assert gw.audit("credential.shared_suspected")[0]["blocked"] is True


def test_fingerprints_leave_the_window_and_each_excess_one_is_reported_once():
    now = [0.0]
    detector = SharedCredentialDetector(SharedCredentials(max_fingerprints=2, window=60), clock=lambda: now[0])
    a, b, c = ("10.0.0.1", "x", "1"), ("10.0.0.2", "x", "1"), ("10.0.0.3", "x", "1")
    assert detector.observe("bot", a).report is None and detector.observe("bot", b).report is None
    first, again = detector.observe("bot", c), detector.observe("bot", c)
    assert first.allowed and first.report is not None and first.report["remote_addr"] == "10.0.0.3"
    assert again.allowed and again.report is None
    assert detector.observe("other-bot", c).report is None  # counted per agent
    now[0] = 120.0  # everything seen before has left the window
    assert detector.observe("bot", a).report is None and detector.observe("bot", c).report is None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
