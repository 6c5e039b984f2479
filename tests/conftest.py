from __future__ import annotations

import os
from collections.abc import Iterator

import mcp.client.stdio
import pytest
import structlog
from hypothesis import settings

from tests.support.postgres import drop_idle, needs_server, require_server

# CI replays the same examples every run (a failure there reproduces); a developer's run explores new ones.
# No deadline anywhere: the 2-core machines are shared, and a slow example is not a wrong one.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The SDK gives a stdio server 2 s to exit after its stdin closes before it sends SIGTERM (the spec's
# shutdown order). server-everything keeps timers and never exits on its own, so every gateway the tests
# stop waited those 2 s per such child; the tests' in-process gateways escalate after 0.2 s instead.
mcp.client.stdio.PROCESS_TERMINATION_TIMEOUT = 0.2


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture starts a gateway: without the cluster, one line saying what is missing.
    if needs_server(item):
        require_server()


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _drop_idle_test_databases() -> Iterator[None]:
    yield
    drop_idle()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_idle(everything=True)
    # "No tests ran" must never look like success in CI.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
