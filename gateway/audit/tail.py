"""Reading the stream as it grows: filters, readable lines, and following across rotations."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from gateway.audit.files import parse_lines, rotated_files
from gateway.terminal import safe

_SHOWN = ("agent", "session", "decision", "reason", "outcome", "error", "actor", "head_seq", "kid")


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


def readable(record: dict[str, Any]) -> str:
    """One line for people: time, event, then the fields that say what happened.

    Values are agent- and server-chosen: controls, bidi overrides and separators are shown escaped.
    """
    return safe(_readable(record))


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


def _records(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    return [record for record in parse_lines(lines) if record is not None]


def read_file(path: Path) -> list[dict[str, Any]]:
    try:
        return _records(path.read_bytes().split(b"\n"))
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
            files = rotated_files(self.path)
            done = next((p for p in files if self.reading(p)), files[-1] if files else None)  # the file just read
            assert self._handle is not None
            self._handle.close()
            self._open()
            # Files that rotated away after it, between two polls or while this reopened (their names sort in
            # chain order); the one now open may have rotated too: it is read on from its handle.
            for later in rotated_files(self.path):
                if done is None or later.name > done.name:
                    if self.reading(later):
                        break
                    records += read_file(later)
            records += self._read()
        return records

    def _read(self) -> list[dict[str, Any]]:
        if self._handle is None:
            return []
        *lines, self._partial = (self._partial + self._handle.read()).split(b"\n")
        return _records(lines)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def history(followers: list[Follower], wanted: Filter, limit: int | None) -> list[dict[str, Any]]:
    """The last `limit` matching records (all, if None) across the followed streams, oldest first.

    The active files are read through their followers, so following picks up exactly where this ends;
    rotated files are read newest first (their names sort in chain order), only as far back as needed.
    """
    found = [r for follower in followers for r in follower.poll() if wanted.matches(r)]
    for follower in followers:
        for path in reversed(rotated_files(follower.path)):
            if limit is not None and len(found) >= limit:
                break
            if wanted.since is not None and path.stat().st_mtime < wanted.since:
                break  # it, and every older file of its stream, ends before `since`
            if not follower.reading(path):
                found = [r for r in read_file(path) if wanted.matches(r)] + found
    found.sort(key=lambda r: float(r.get("ts", 0)))
    return found[max(0, len(found) - limit) :] if limit is not None else found
