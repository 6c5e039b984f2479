"""The test suite says what it needs: without PostgreSQL, the tests that need it fail at once with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens there once the socket is closed


def test_without_postgresql_the_replica_tests_fail_at_once_with_one_line_naming_the_variable() -> None:
    port = _closed_port()
    env = {**os.environ, "GATEWAY_TEST_PG": f"postgresql://postgres@127.0.0.1:{port}"}
    env.pop("GATEWAY_TEST_STORE", None)
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-n0",  # two tests: no pytest-xdist workers to start
            "tests/replicas/test_postgres_store.py::test_replicas_starting_together_apply_each_migration_once",
            "tests/replicas/test_postgres_store.py::test_a_database_migrated_by_a_newer_gateway_is_refused_with_the_reason",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    expected = f"PostgreSQL is not reachable at 127.0.0.1:{port}"
    lines = [line for line in output.splitlines() if expected in line]
    assert lines, output
    assert "GATEWAY_TEST_PG=postgresql://" in lines[0] and "pg_ctlcluster" in lines[0]
    assert "ConnectionRefusedError" not in output and "Traceback" not in output, output
    assert "2 errors" in output, output  # both tests stopped in setup, neither ran into a connection timeout
    assert elapsed < 60, f"took {elapsed:.1f} s"
