from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import mcp.client.stdio
import pytest
import structlog
from hypothesis import settings
from xdist.scheduler import LoadScopeScheduling

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


# pytest-xdist (`-n auto --dist loadscope`, pyproject's addopts) runs each group whole on one worker: its
# module-scoped gateways and suites start once. A group is a module, except modules that share something outside
# tmp_path: run.sh creates one demo repository in /tmp for every copy of the quickstart, and two first runs at
# once would race to create it.
SHARED = {"tests/test_quickstart.py": "quickstart", "tests/login/test_quickstart_sign_in.py": "quickstart"}
# The groups that take longest (`--durations`), handed out first (--no-loadscope-reorder keeps the collection's
# order) so that no worker is left finishing one alone.
LONGEST_FIRST = (
    "tests/test_conformance.py",
    "quickstart",
    "tests/budgets/test_accounting.py",
    "tests/audit/test_audit_gateway.py",
    "tests/test_outcomes.py",
    "tests/login/test_refusals.py",
    "tests/test_reload.py",
    "tests/pins/test_quarantine.py",
)


def _group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return SHARED.get(module, module)


class _ByGroup(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:  # the scheduler's own seam (LoadFileScheduling overrides it too)
        return _group(nodeid)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    return _ByGroup(config, log) if config.getvalue("dist") == "loadscope" else None


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # `-n auto`: the suite mostly waits (servers starting, timeouts running out, browsers, the conformance
    # suite's Node process), so two workers per core keep the cores busy.
    return 2 * len(os.sched_getaffinity(0))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        group = _group(item.nodeid)
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every module keeps its own order


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
