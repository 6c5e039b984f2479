"""The task group a long-lived component owns while its `run()` is entered (None outside it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc


class OwnedTasks:
    """Where a component starts its background work; `group` is None before `run()` and after it ends."""

    def __init__(self) -> None:
        self.group: anyio.abc.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """Own a task group until exit; leaving cancels what is still running in it."""
        async with anyio.create_task_group() as tg:
            self.group = tg
            try:
                yield tg
            finally:
                self.group = None
                tg.cancel_scope.cancel()
