"""What keeps the gateway's RSS down (issue 19; benchmarks/rss.py measures it): the SQLite store's page cache
bounded below SQLite's default, so RSS does not creep as settlements pile up, and nothing imported at startup that
only a page of the console or a sign-in uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gateway.store.sqlite import CACHE_KIB, SQLiteStore


def test_the_page_cache_is_bounded(tmp_path: Path) -> None:
    async def main() -> int:
        store = SQLiteStore(tmp_path / "state" / "gateway.db")
        await store.open()
        try:
            return int(store._conn().execute("PRAGMA cache_size").fetchone()[0])
        finally:
            await store.close()

    assert anyio.run(main) == -CACHE_KIB
    assert CACHE_KIB < 2000  # SQLite's default: 2,000 KiB


@pytest.mark.parametrize("package", ["jinja2", "authlib"])  # the console's templates; sign-in's PKCE check
def test_what_only_a_page_or_a_sign_in_uses_loads_at_its_first_use(package: str) -> None:
    code = f"import sys, gateway.app; print(sorted(m for m in sys.modules if m.split('.')[0] == {package!r}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
