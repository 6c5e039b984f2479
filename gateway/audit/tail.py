"""Reading the stream as it grows: filters, readable lines, and following across rotations."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from gateway.audit.files import rotated_files
from gateway.durations import parse_duration

_SHOWN = ("agent", "session", "decision", "reason", "outcome", "error", "actor", "head_seq", "kid")


def parse_since(text: str, now: float) -> float:
    """`15m` (that long ago) or an ISO 8601 time (UTC unless it says otherwise) -> a timestamp.

    Raises:
        ValueError: neither.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 15m nor an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Filter:
    agent: str | None = None
    session: str | None = None
    events: tuple[str, ...] = ()  # globs: "tool.*"
    since: float | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        return (
            (self.agent is None or record.get("agent") == self.agent)
            and (self.session is None or record.get("session") == self.session)
            and (not self.events or any(fnmatch.fnmatchcase(str(record.get("event")), e) for e in self.events))
            and (self.since is None or float(record.get("ts", 0)) >= self.since)
        )


# Control characters (a terminal's escape sequences, line breaks) in a value are shown escaped, never sent raw.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def readable(record: dict[str, Any]) -> str:
    """One line for people: time, event, then the fields that say what happened."""
    return _readable(record).translate(_CONTROL)


def _readable(record: dict[str, Any]) -> str:
    ts = datetime.fromtimestamp(float(record.get("ts", 0)), UTC).isoformat(timespec="milliseconds")
    parts = [ts.replace("+00:00", "Z"), f"{record.get('event', '?'):<16}"]
    tool = ".".join(str(record[k]) for k in ("server", "tool") if record.get(k))
    parts += [f"{key}={record[key]}" for key in _SHOWN[:2] if record.get(key)]
    parts += [f"tool={tool}"] if tool else []
    parts += [f"{key}={record[key]}" for key in _SHOWN[2:] if record.get(key)]
    tokens = [record.get("request_tokens"), record.get("response_tokens")]
    if tokens != [None, None]:
        parts.append("tokens=" + "/".join("-" if t is None else str(t) for t in tokens))
    if record.get("latency_ms") is not None:
        parts.append(f"latency={record['latency_ms']}ms")
    return "  ".join(parts).rstrip()


def as_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def read_file(path: Path) -> list[dict[str, Any]]:
    try:
        return list(_records(path.read_bytes().split(b"\n")))
    except FileNotFoundError:
        return []


class Follower:
    """The records appended to one stream's active file, continuing into the next file after a rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None
        self._partial = b""
        self._open()

    def _open(self) -> None:
        try:
            self._handle = self.path.open("rb")
        except FileNotFoundError:  # between a rotation's unlink and the new file
            self._handle = None
        self._partial = b""

    def reading(self, path: Path) -> bool:
        """Whether `path` is the file this follower has open."""
        return self._handle is not None and os.path.samestat(os.stat(path), os.fstat(self._handle.fileno()))

    def poll(self) -> list[dict[str, Any]]:
        """Every complete record written since the last poll (from the file's start, the first time)."""
        if self._handle is None:
            self._open()
            if self._handle is None:
                return []
        records = self._read()
        try:
            rotated = not self.reading(self.path)
        except FileNotFoundError:
            return records
        if rotated:
            records += self._read()  # what was written before the rename
            mine = [p for p in rotated_files(self.path) if self.reading(p)]
            for later in (p for p in rotated_files(self.path) if mine and p.name > mine[0].name):
                records += read_file(later)  # files that rotated away between two polls
            assert self._handle is not None
            self._handle.close()
            self._open()
            records += self._read()
        return records

    def _read(self) -> list[dict[str, Any]]:
        if self._handle is None:
            return []
        *lines, self._partial = (self._partial + self._handle.read()).split(b"\n")
        return list(_records(lines))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def history(followers: list[Follower], wanted: Filter, limit: int | None) -> list[dict[str, Any]]:
    """The last `limit` matching records (all, if None) across the followed streams, oldest first.

    The active files are read through their followers, so following picks up exactly where this ends;
    rotated files are read newest first, only as far back as needed.
    """
    if limit == 0:
        for follower in followers:
            follower.poll()
        return []
    found = [r for follower in followers for r in follower.poll() if wanted.matches(r)]
    older = [p for follower in followers for p in rotated_files(follower.path) if not follower.reading(p)]
    for path in sorted(older, key=lambda p: p.stat().st_mtime, reverse=True):
        if limit is not None and len(found) >= limit:
            break
        if wanted.since is not None and path.stat().st_mtime < wanted.since:
            break  # it, and every file older than it, ends before `since`
        found = [r for r in read_file(path) if wanted.matches(r)] + found
    found.sort(key=lambda r: float(r.get("ts", 0)))
    return found[-limit:] if limit is not None else found
