"""Long-lived components own their tasks through `run()`: work starts only inside it, and leaving it
stops the work and writes what is pending."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest

from gateway.errors import Unavailable
from gateway.http.edge import AuthFailures
from gateway.identity.sealing import Sealer
from gateway.mcp.exchanges import Exchanges

pytestmark = pytest.mark.anyio


class _Audit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def emit(self, event: str, **fields: Any) -> None:
        self.records.append({"event": str(event), **fields})


class _Leg:
    sid = "s1"

    async def ask(self, request: types.InputRequest) -> types.InputResponse | types.ErrorData:
        raise AssertionError("a paused call's questions go out in its result")

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        pass

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        pass


async def test_an_exchange_starts_only_while_its_run_is_entered_and_leaving_cancels_its_call() -> None:
    exchanges = Exchanges(Sealer(bytes(32)), anyio.current_time, ttl=5)
    cancelled = anyio.Event()

    async def work(leg: Any) -> types.CallToolResult:
        try:
            await leg.ask(types.ListRootsRequest())
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return types.CallToolResult(content=[])

    with pytest.raises(Unavailable):
        await exchanges.start("s1", _Leg(), work)
    async with exchanges.run():
        paused = await exchanges.start("s1", _Leg(), work)
        assert isinstance(paused, types.InputRequiredResult)
    with anyio.fail_after(5):
        await cancelled.wait()
    with pytest.raises(Unavailable):
        await exchanges.start("s1", _Leg(), work)


async def test_auth_failures_write_the_last_windows_counts_when_run_is_left() -> None:
    audit = _Audit()
    failures = AuthFailures(audit, window=3600)  # type: ignore[arg-type]
    async with failures.run():
        for _ in range(3):
            await failures.failed("10.0.0.1", "bad token")
        assert [r["reason"] for r in audit.records] == ["bad token"]  # the first at once, the rest counted
    assert audit.records[-1]["reason"] == "aggregate" and audit.records[-1]["count"] == 3
