"""The one reader of audit files for tests: a JSON-lines file, optionally filtered by event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def audit_records(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """Every record in the file (none if it does not exist yet), or only those of one event."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if event is None or r["event"] == event]
