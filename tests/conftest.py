from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.support.postgres import drop_idle


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


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
