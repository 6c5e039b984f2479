"""The audit writer: one chain per gateway process, written before forwarding.

`emit(..., durable=True)` returns only once the record is on disk (fsync), so
the pipeline can write `tool.call` before it calls the upstream; any failure
raises `AuditUnavailable` and the caller refuses the request.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from gateway.audit.chain import GENESIS, canonical, record_hash
from gateway.errors import AuditUnavailable


class Audit:
    """Appends hash-chained records to one JSON-lines file."""

    def __init__(
        self,
        path: Path,
        instance: str,
        *,
        fsync: str = "always",
        clock: Callable[[], float] = time.time,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.instance = instance
        self.shared = shared  # several processes append (operator commands): lock and re-read the head
        self.fsync_always = fsync == "always"
        self.clock = clock
        self._lock = anyio.Lock()
        self._fd: int | None = None
        self.seq = 0
        self.head = GENESIS
        self.healthy = True

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._resume()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _resume(self) -> None:
        """Continue the chain from the last record already in the file."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as handle:
            handle.seek(max(0, self.path.stat().st_size - 65536))
            lines = handle.read().splitlines()
        for line in reversed(lines):
            try:
                last = json.loads(line)
            except ValueError:
                continue
            if last.get("gateway") == self.instance:
                self.seq, self.head = int(last["seq"]), str(last["hash"])
            return

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def probe(self) -> None:
        """Check the sink can write again after a failure.

        Raises:
            AuditUnavailable: it still cannot.
        """
        try:
            if self._fd is None:
                raise OSError("audit sink is closed")
            os.fsync(self._fd)
            if not os.access(self.path, os.W_OK):
                raise OSError(f"{self.path} is not writable")
        except OSError as exc:
            raise AuditUnavailable(f"audit sink cannot write: {exc}") from exc
        self.healthy = True

    async def emit(self, event: str, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one record; with `durable`, return only once it is on disk.

        Raises:
            AuditUnavailable: the record could not be written.
        """
        async with self._lock:
            if self.shared and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self._resume()
            try:
                return self._append(event, durable, fields)
            finally:
                if self.shared and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _append(self, event: str, durable: bool, fields: dict[str, Any]) -> dict[str, Any]:
        record = {
            "ts": round(self.clock(), 6),
            "event": event,
            "gateway": self.instance,
            **{k: v for k, v in fields.items() if v is not None},
            "seq": self.seq + 1,
            "prev_hash": self.head,
        }
        record["hash"] = record_hash(record)
        line = canonical(record) + b"\n"
        try:
            if self._fd is None:
                raise OSError("audit sink is closed")
            os.write(self._fd, line)
            if durable or self.fsync_always:
                os.fsync(self._fd)
        except OSError as exc:
            self.healthy = False
            raise AuditUnavailable(f"audit sink cannot write: {exc}") from exc
        self.healthy = True
        self.seq, self.head = record["seq"], record["hash"]
        return record
