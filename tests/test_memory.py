"""What keeps the gateway's RSS down (issue 19; benchmarks/rss.py measures it): the SQLite store's page cache
bounded below SQLite's default, so RSS does not creep as settlements pile up, and nothing imported at startup that
only a page of the console uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio

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


def test_the_console_templates_load_at_the_first_page() -> None:
    code = "import sys, gateway.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jinja2'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
