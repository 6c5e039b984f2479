"""Where the audit stream lives on disk.

The gateway appends to the configured path (`audit.jsonl`). A rotation renames
it to `<stem>.<seq of its last record, 12 digits><suffix>`
(`audit.000000004711.jsonl`), so file names sort in chain order and the chain
continues in the new file. Operator commands append to their own chain in
`<stem>-cli<suffix>`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_CHUNK = 65536


def cli_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-cli{path.suffix}")


def cli_instance(instance: str) -> str:
    """The name of the operator commands' chain beside the gateway `instance`'s."""
    return f"{instance}/cli"


def rotated_path(path: Path, last_seq: int) -> Path:
    return path.with_name(f"{path.stem}.{last_seq:012d}{path.suffix}")


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of the stream at `path`, oldest first."""
    pattern = re.compile(re.escape(path.stem) + r"\.\d{12}" + re.escape(path.suffix))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def stream_files(path: Path) -> list[Path]:
    """Every file of the stream at `path` in chain order: the rotated ones, then the active one."""
    return rotated_files(path) + ([path] if path.exists() else [])


def audit_files(path: Path) -> list[Path]:
    """Every file of the stream at `path`, then every file of its operator chain, each in chain order."""
    return stream_files(path) + stream_files(cli_path(path))


def parse_lines(lines: Iterable[bytes]) -> Iterator[dict[str, Any] | None]:
    """Each line that is not blank, parsed: a JSON object, or None for a line that is not one."""
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield None
            continue
        yield record if isinstance(record, dict) else None


def _lines_backwards(fd: int, end: int) -> Iterator[bytes]:
    """The lines of the open file before offset `end`, last first."""
    buffer, position = b"", end
    while position > 0:
        size = min(_CHUNK, position)
        position -= size
        buffer = os.pread(fd, size, position) + buffer
        first, *complete = buffer.split(b"\n")
        yield from reversed(complete)
        buffer = first
    if buffer:
        yield buffer


def records_backwards(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The records of `paths` (given newest file first), last first; lines that are not records are skipped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        try:
            for record in parse_lines(_lines_backwards(fd, complete_size(fd))):
                if record is not None:
                    yield record
        finally:
            os.close(fd)


def complete_size(fd: int) -> int:
    """The size of the open file up to its last complete line (a crash can leave half a line)."""
    size = os.fstat(fd).st_size
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        cut = os.pread(fd, position - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        position = start
    return 0


def last_record(path: Path, instance: str) -> dict[str, Any] | None:
    """The last record of `instance`'s chain in the file, if the file's last record is one."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        for line in _lines_backwards(fd, complete_size(fd)):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            return record if isinstance(record, dict) and record.get("gateway") == instance else None
        return None
    finally:
        os.close(fd)
