"""The hash-chain file: one chain appended to one JSON-lines file, with its checkpoints and rotations.

Both sinks write through it (gateway_sink.py for the gateway, operator_sink.py
for operator commands); it knows nothing of durability or of failing closed.
`append` chains a record onto the head (`seq`, `prev_hash`, `hash`) and writes
it with one write(2), or cuts the file back and raises: never half a record.
Every `checkpoints.every` records it appends a signed checkpoint; the latest is
kept `unsaved` until the sink knows its file is on disk and saves it in the store.

The chain continues from the highest point known (`resume`): the file's last
record, this process's own head, or the store's checkpoint (a file whose tail
was cut resumes above the cut, so verify still names the gap).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit.chain import GENESIS, seal
from gateway.audit.checkpoints import EVENT as CHECKPOINT
from gateway.audit.checkpoints import Checkpoints
from gateway.audit.files import complete_size, last_record, rotated_files, rotated_path
from gateway.config.dirs import private_dir
from gateway.errors import AuditUnavailable, Unavailable

log = logging.getLogger("gateway.audit")


class ChainFile:
    """Appends hash-chained records to the file at `path`, rotating it by size or age."""

    def __init__(
        self,
        path: Path,
        instance: str,
        *,
        checkpoints: Checkpoints | None,
        clock: Callable[[], float],
        exclusive: bool,
        rotate_bytes: int | None = None,
        rotate_interval: float | None = None,
        on_rotated: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.instance = instance
        self.checkpoints = checkpoints
        self.clock = clock
        self.exclusive = exclusive  # one process writes: it holds the file's lock while it is open
        self.rotate_bytes = rotate_bytes
        self.rotate_interval = rotate_interval
        self.on_rotated = on_rotated  # called once a rotation has retired a file (it may raise OSError)
        self.seq = 0
        self.head = GENESIS
        self.fd: int | None = None
        self.retired: list[int] = []  # rotated-out files awaiting their last fsync
        self.since_checkpoint = 0
        self.last_checkpoint = 0.0
        self._unsaved: dict[str, Any] | None = None  # the latest checkpoint, saved in the store once on disk
        self._floor = (0, GENESIS)  # the store's checkpoint: the chain never continues below it
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0
        self._file_started = 0.0

    async def open(self) -> None:
        """Open the file and continue the chain from the highest point known (see the module docstring)."""
        private_dir(self.path.parent)
        if self.checkpoints is not None:
            latest = await self.checkpoints.latest(self.instance)
            if latest is not None:
                self._floor = (int(latest["seq"]), str(latest["head"]))
        self.open_file()
        self.resume()
        self.last_checkpoint = self.clock()

    def open_file(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if self.exclusive:
                _lock_for_writing(fd, self.path)
            info = os.fstat(fd)
            size = complete_size(fd)
            if size < info.st_size:
                log.warning("%s: removing an incomplete last line (%d bytes)", self.path, info.st_size - size)
                os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
        self.fd, self._identity, self._size = fd, (info.st_dev, info.st_ino), size
        self._file_started = self.clock()

    def resume(self) -> None:
        """Continue from the highest point known: the file's last record, this process's, the store's checkpoint."""
        assert self.fd is not None
        self._size = os.fstat(self.fd).st_size
        files = [self.path] if self._size else rotated_files(self.path)[-1:]
        last = last_record(files[0], self.instance) if files else None
        on_disk = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
        self.seq, self.head = max((self.seq, self.head), on_disk, self._floor, key=lambda point: point[0])
        if self._floor[0] > on_disk[0] and self.seq == self._floor[0]:
            log.warning(
                "%s ends at seq %d but the store's checkpoint is at seq %d: records are missing; "
                "continuing from the checkpoint",
                self.path,
                on_disk[0],
                self._floor[0],
            )

    def check(self) -> None:
        """Raises OSError unless the path still names the open file (moved, deleted or replaced)."""
        if self.fd is None:
            raise OSError("the audit file is closed")
        info = os.stat(self.path)
        if (info.st_dev, info.st_ino) != self._identity:
            raise OSError(f"{self.path} was moved, deleted or replaced")

    def close_files(self) -> None:
        for fd in [*self.retired, *([self.fd] if self.fd is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.retired, self.fd = [], None

    # ------------------------------------------------------------ writing

    def append(self, record: dict[str, Any]) -> OSError | None:
        """Chain and write one record, then a checkpoint if one is due by count.

        Returns:
            The error of a due checkpoint that could not be written (the record itself is written).

        Raises:
            OSError: the record was not written.
        """
        self.write(record)
        if self.checkpoints is not None and record["event"] != CHECKPOINT:
            self.since_checkpoint += 1
            if self.since_checkpoint >= self.checkpoints.every:
                try:
                    self.append_checkpoint()
                except OSError as exc:
                    return exc
        return None

    def write(self, record: dict[str, Any]) -> None:
        """Chain and write one record (rotating first when due).

        Raises:
            OSError: the record was not written.
        """
        if self.fd is None:
            raise OSError("the audit file is closed")
        if self._rotation_due():
            self._rotate()
        record["seq"], record["prev_hash"] = self.seq + 1, self.head
        digest, line = seal(record)
        _write_all(self.fd, line, self._size)
        record["hash"] = digest
        self.seq, self.head, self._size = record["seq"], digest, self._size + len(line)

    def append_checkpoint(self) -> None:
        """Sign the head and write it as a checkpoint record.

        Raises:
            OSError: it was not written.
        """
        assert self.checkpoints is not None
        signed = self.checkpoints.sign(self.instance, self.seq, self.head)
        self.write({"ts": round(self.clock(), 6), "event": CHECKPOINT, "gateway": self.instance, **signed})
        self.since_checkpoint, self.last_checkpoint, self._unsaved = 0, self.clock(), signed

    def checkpoint_due_in(self) -> float:
        """Seconds until a checkpoint is due by time (records arrived since the last); infinite when none is."""
        if self.checkpoints is None or not self.since_checkpoint:
            return math.inf
        return max(0.0, self.last_checkpoint + self.checkpoints.interval - self.clock())

    async def save_checkpoint(self, synced: int) -> None:
        """Save the latest checkpoint in the store once the record `synced` (on disk) covers it."""
        signed = self._unsaved
        if signed is None or self.checkpoints is None or synced <= signed["head_seq"]:
            return
        self._unsaved = None
        try:
            await self.checkpoints.save(self.instance, signed, self.clock())
        except Unavailable as exc:
            log.warning("audit checkpoint at seq %d not saved in the store: %s", signed["head_seq"], exc)

    # ------------------------------------------------------------ rotation

    def _rotation_due(self) -> bool:
        if not self._size:
            return False
        if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
            return True
        return self.rotate_interval is not None and self.clock() - self._file_started >= self.rotate_interval

    def _rotate(self) -> None:
        target = rotated_path(self.path, self.seq)
        if target.exists():  # rename would replace it; only this process writes here, so checking first is enough
            raise FileExistsError(f"{target} exists: cannot rotate {self.path}")
        os.rename(self.path, target)
        old = self.fd
        assert old is not None
        self.open_file()
        self.retired.append(old)
        if self.on_rotated is not None:
            self.on_rotated()


def unavailable(reason: object) -> AuditUnavailable:
    return AuditUnavailable(f"audit sink cannot write: {reason}")


def _lock_for_writing(fd: int, path: Path) -> None:
    """One writer per chain file: a second gateway process on the same path would fork the chain."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(
            f"{path} is being written by another gateway process; give each process its own instance and audit.path"
        ) from None


def _write_all(fd: int, data: bytes, size: int) -> None:
    """Write all of `data`, or cut the file back to `size` and raise: never leave half a record."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError("short write")
            view = view[written:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise
