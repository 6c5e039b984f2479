"""The README's Performance tables, made again from the results the benchmarks wrote.

    .venv/bin/python benchmarks/tables.py            # print the tables from benchmarks/results/*.json
    .venv/bin/python benchmarks/tables.py --write    # and put them into README.md
    .venv/bin/python benchmarks/tables.py --write --only peers

Each generated table sits in README.md between `<!-- results: NAME -->` and `<!-- /results: NAME -->`, NAME
being the benchmark whose benchmarks/results/NAME.json it is made from (peers, overhead, rss), rendered by that
benchmark's own `report()`, so a refresh after a new run is one step and the README cannot drift from the
script's output. A block whose JSON is missing is left as it is; the prose around the blocks is not touched.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # sibling scripts, not a package
import peers
import rss

README = overhead.REPO / "README.md"
REPORTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "peers": peers.report,
    "overhead": overhead.report,
    "rss": rss.report,
}


def tables() -> dict[str, str]:
    """Each benchmark's table, for the results present."""
    made = {}
    for name, report in REPORTS.items():
        path = overhead.RESULTS / f"{name}.json"
        if path.exists():
            made[name] = report(json.loads(path.read_text()))
    return made


def fill(readme: str, made: dict[str, str]) -> tuple[str, list[str]]:
    """`readme` with each block whose table was made replaced; the names replaced."""
    replaced = []
    for name, table in made.items():
        block = re.compile(rf"(<!-- results: {name} -->\n).*?(\n<!-- /results: {name} -->)", re.S)
        readme, n = block.subn(lambda m, t=table: f"{m.group(1)}{t}{m.group(2)}", readme)
        if n:
            replaced.append(name)
    return readme, replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the blocks in README.md")
    parser.add_argument("--only", nargs="+", choices=list(REPORTS), help="only these tables")
    args = parser.parse_args()
    made = {name: table for name, table in tables().items() if not args.only or name in args.only}
    if not made:
        raise SystemExit(f"no results in {overhead.RESULTS}: run the benchmarks first")
    for name, table in made.items():
        print(f"<!-- results: {name} -->\n{table}\n<!-- /results: {name} -->\n")
    if args.write:
        text, replaced = fill(README.read_text(), made)
        README.write_text(text)
        missing = sorted(made.keys() - set(replaced))
        print(
            f"README.md: replaced {', '.join(replaced) or 'nothing'}"
            + (f"; no block for {', '.join(missing)}" if missing else "")
        )


if __name__ == "__main__":
    main()
