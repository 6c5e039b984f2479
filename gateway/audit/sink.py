"""The audit writer: one hash chain per gateway process, written before forwarding.

`emit` chains and appends its record at once: one write(2) on the event loop,
which makes it visible to readers and safe from a crash of the process.
Durability is group-committed: a flusher task fsyncs in a worker thread, and
only a `durable` record (a tool.call before its upstream is called, an operator
change) waits for the fsync that covers it; every record written meanwhile
shares that fsync. Other records are fsynced at most `batch_interval` later.
With `fsync: batch` nothing waits for an fsync.

Fail closed: a durable record that cannot be written raises `AuditUnavailable`
and the caller refuses the request; other records are held in memory and
written, in order, once the sink recovers. Before every write the sink checks
that its path still names its open file (moved, deleted or replaced is a
failure). It recovers by reopening the path, continuing the chain from the
highest point it knows, and recording `audit.recovered`.

Signed checkpoints (checkpoints.py) are written every N records, every T
seconds while records arrive, and at close; each is saved in the store once
the file holding it is on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from gateway.audit import metrics
from gateway.audit.chain import GENESIS, seal
from gateway.audit.checkpoints import EVENT as CHECKPOINT
from gateway.audit.checkpoints import Checkpoints
from gateway.audit.events import Event
from gateway.audit.files import cli_instance, cli_path, complete_size, last_record, rotated_files, rotated_path
from gateway.audit.records import capped
from gateway.config.dirs import private_dir
from gateway.config.files import GatewayConfig
from gateway.errors import AuditUnavailable, Unavailable
from gateway.identity.keys import KeyRing
from gateway.store.base import Store

log = logging.getLogger("gateway.audit")

MAX_HELD = 10_000  # records held in memory while the sink is down; beyond this the oldest are counted as lost
RETRY_EVERY = 1.0  # seconds between recovery attempts while the sink is down
GATHER_YIELDS = 8  # an inline fsync waits while yielding still brings in records, at most this many times
INLINE_FSYNC_MAX = 0.002  # while fsyncs take less than this (moving average), run them on the event loop:
#                           far cheaper than a thread hop; a slower disk moves them to a worker thread


class Audit:
    """Appends hash-chained records to one JSON-lines file."""

    def __init__(
        self,
        path: Path,
        instance: str,
        *,
        fsync: str = "always",
        batch_interval: float = 0.005,
        rotate_bytes: int | None = None,
        rotate_interval: float | None = None,
        checkpoints: Checkpoints | None = None,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.instance = instance
        self.shared = shared  # several processes append (operator commands): lock and re-read the head
        self.fsync_always = fsync == "always"
        self.batch_interval = batch_interval
        self.rotate_bytes = rotate_bytes
        self.rotate_interval = rotate_interval
        self.checkpoints = checkpoints
        self.clock = clock
        self.observe: Callable[[dict[str, Any]], None] | None = None  # another reader of each record (telemetry)
        self.seq = 0
        self.head = GENESIS
        self.healthy = True
        self.error: str | None = None
        self._floor = (0, GENESIS)  # the store's checkpoint: the chain never continues below it
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0
        self._file_started = 0.0
        self._retired: list[int] = []  # rotated-out files awaiting their last fsync
        self._synced = 0  # seq of the last record known to be on disk
        self._fsync_seconds = 0.0  # moving average of recent fsync durations
        self._running = False
        self._sync_requested = False
        self._urgent = False
        self._wake = anyio.Event()
        self._synced_event = anyio.Event()
        self._io = anyio.Lock()  # file changes (recovery, close) never overlap an fsync
        self._since_checkpoint = 0
        self._last_checkpoint = 0.0
        self._unsaved: dict[str, Any] | None = None  # the latest checkpoint, saved in the store once on disk
        self._held: deque[dict[str, Any]] = deque()
        self._lost = 0
        self._refused = 0
        self._down_since = 0.0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        private_dir(self.path.parent)
        if self.checkpoints is not None:
            latest = await self.checkpoints.latest(self.instance)
            if latest is not None:
                self._floor = (int(latest["seq"]), str(latest["head"]))
        self._open_file()
        self._resume()
        self._last_checkpoint = self.clock()
        self._wake, self._synced_event = anyio.Event(), anyio.Event()
        metrics.HEALTHY.set(value=1)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Audit]:
        """Open the sink and run its flusher; at exit write the last checkpoint and close."""
        await self.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flusher)
                self._running = True
                try:
                    yield self
                finally:
                    self._running = False
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        if self._fd is None:
            return
        async with self._io:
            with self._exclusive():
                try:
                    if self.shared:
                        self._resume()
                    if self.healthy and self.checkpoints is not None and self._since_checkpoint:
                        self._append_checkpoint()
                    self._sync_now()
                except OSError as exc:
                    self._failed(exc)
                await self._save_checkpoint()
            self._close_files()
        self._synced_event.set()  # anyone still waiting finds the sink closed
        if self._held:
            log.error("closing with %d audit records that could not be written: %s", len(self._held), self.error)

    # ------------------------------------------------------------ writing

    async def emit(self, event: Event, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one record; with `durable`, return only once it is on disk.

        Raises:
            AuditUnavailable: a durable record could not be written (any record, for operator commands).
        """
        record: dict[str, Any] = {"ts": round(self.clock(), 6), "event": event, "gateway": self.instance}
        for key, value in capped(fields).items():  # a client's string of any size costs a bounded record
            if value is not None:
                record[key] = value
        if self.shared:
            self._append_shared(record)
        elif self._append_or_hold(record, durable):
            await self._apply_fsync_policy(record["seq"], durable)
        metrics.observe(record)
        if self.observe is not None:
            self.observe(record)
        return record

    def _append_or_hold(self, record: dict[str, Any], durable: bool) -> bool:
        """Write the record now. If the sink is down, refuse it when durable, else hold it until recovery."""
        try:
            if not self.healthy:
                raise OSError(self.error)
            self._append(record)
            return True
        except OSError as exc:
            self._failed(exc)
            if durable:
                self._refused += 1
                raise _unavailable(self.error) from None
            self._hold(record)
            return False

    async def _apply_fsync_policy(self, seq: int, durable: bool) -> None:
        """After a write: wait for the fsync that covers it (durable, fsync always), or have one come soon."""
        if not self._running:
            if durable or self.fsync_always:
                self._sync_or_refuse()
        elif durable and self.fsync_always:
            await self._wait_synced(seq)
        elif not self._sync_requested:
            self._sync_requested = True
            self._wake.set()

    def _append(self, record: dict[str, Any]) -> None:
        """Chain and write one record (and a checkpoint when one is due).

        Raises:
            OSError: the record was not written.
        """
        self._check_file()
        if self._rotation_due():
            self._rotate()
        record["seq"], record["prev_hash"] = self.seq + 1, self.head
        digest, line = seal(record)
        _write_all(self._fd, line, self._size)  # type: ignore[arg-type]
        record["hash"] = digest
        self.seq, self.head, self._size = record["seq"], digest, self._size + len(line)
        if self.checkpoints is not None and record["event"] != CHECKPOINT:
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoints.every:
                try:
                    self._append_checkpoint()
                except OSError as exc:  # the record itself is written; the next one will find the sink down
                    self._failed(exc)

    def _append_checkpoint(self) -> None:
        assert self.checkpoints is not None
        signed = self.checkpoints.sign(self.instance, self.seq, self.head)
        self._append({"ts": round(self.clock(), 6), "event": CHECKPOINT, "gateway": self.instance, **signed})
        self._since_checkpoint, self._last_checkpoint, self._unsaved = 0, self.clock(), signed

    def _append_shared(self, record: dict[str, Any]) -> None:
        """Operator commands: take the file lock, continue from whoever wrote last, write and fsync."""
        try:
            with self._exclusive():
                self._resume()
                self._append(record)
                self._sync_now()
        except OSError as exc:
            raise _unavailable(exc) from exc

    @contextlib.contextmanager
    def _exclusive(self) -> Any:
        if not self.shared or self._fd is None:
            yield
            return
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _hold(self, record: dict[str, Any]) -> None:
        if len(self._held) >= MAX_HELD:
            self._held.popleft()
            self._lost += 1
        self._held.append(record)

    # ------------------------------------------------------------ files

    def _open_file(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if not self.shared:
                _lock_for_writing(fd, self.path)
            info = os.fstat(fd)
            size = complete_size(fd)
            if size < info.st_size:
                log.warning("%s: removing an incomplete last line (%d bytes)", self.path, info.st_size - size)
                os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._identity, self._size = fd, (info.st_dev, info.st_ino), size
        self._file_started = self.clock()

    def _resume(self) -> None:
        """Continue from the highest point known: the file's last record, this process's, the store's checkpoint."""
        assert self._fd is not None
        self._size = os.fstat(self._fd).st_size
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

    def _check_file(self) -> None:
        if self._fd is None:
            raise OSError("the audit file is closed")
        info = os.stat(self.path)
        if (info.st_dev, info.st_ino) != self._identity:
            raise OSError(f"{self.path} was moved, deleted or replaced")

    def _rotation_due(self) -> bool:
        if not self._size or self.shared:
            return False
        if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
            return True
        return self.rotate_interval is not None and self.clock() - self._file_started >= self.rotate_interval

    def _rotate(self) -> None:
        target = rotated_path(self.path, self.seq)
        if target.exists():  # rename would replace it; only this process writes here, so checking first is enough
            raise FileExistsError(f"{target} exists: cannot rotate {self.path}")
        os.rename(self.path, target)
        old = self._fd
        assert old is not None
        self._open_file()
        self._retired.append(old)
        if not self._running:
            self._sync_now()

    def _close_files(self) -> None:
        for fd in [*self._retired, *([self._fd] if self._fd is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._retired, self._fd = [], None

    # ------------------------------------------------------------ durability

    def _sync_now(self) -> None:
        """fsync on this thread: everything written so far becomes durable, and its waiters are woken.

        Raises:
            OSError: the fsync failed (its waiters are woken all the same; the caller records the failure).
        """
        retired, self._retired = self._retired, []
        synced, self._synced_event = self._synced_event, anyio.Event()
        try:
            if self.seq > self._synced or retired:  # else a waiter only needs waking: its record is synced already
                self._timed(_fsync_all(retired, self._fd, self.path.parent if retired else None))
                self._synced = self.seq
        finally:
            synced.set()

    def _timed(self, elapsed: float) -> None:
        """Record how long the disk took (the fsync alone, never a thread hop: that would make slow look slower)."""
        self._fsync_seconds = 0.8 * self._fsync_seconds + 0.2 * elapsed
        metrics.WRITES.observe(elapsed)

    def _inline(self) -> bool:
        """Whether fsyncs are fast enough to run on the event loop (no flusher also means inline)."""
        return not self._running or self._fsync_seconds < INLINE_FSYNC_MAX

    def _sync_or_refuse(self) -> None:
        try:
            self._sync_now()
        except OSError as exc:
            self._failed(exc)
            self._refused += 1
            raise _unavailable(exc) from None

    async def _wait_synced(self, seq: int) -> None:
        while self._synced < seq:
            if not self.healthy:
                self._refused += 1
                raise _unavailable(self.error)
            if self._inline() and not self._io.locked():
                # Group commit: let the tasks that are ready write their records first, then one fsync covers them.
                for _ in range(GATHER_YIELDS):
                    written = self.seq
                    await anyio.lowlevel.checkpoint()
                    if self.seq == written:
                        break
                if self._synced < seq and not self._io.locked():
                    self._commit()  # synchronous: nothing else runs while it fsyncs, so no lock is needed
                    await self._save_checkpoint()
                continue
            synced = self._synced_event
            self._urgent = True
            self._wake.set()
            await synced.wait()

    def _commit(self) -> None:
        """On the event loop: a checkpoint if its interval has passed, then the fsync that makes it all durable."""
        try:
            self._checkpoint_if_due()
            self._sync_now()
        except OSError as exc:
            self._failed(exc)

    async def _flusher(self) -> None:
        while True:
            await self._sleep(RETRY_EVERY if not self.healthy else self._checkpoint_due_in())
            if self.seq > self._synced and not self._urgent:
                await self._sleep(self.batch_interval)  # let records arriving now share the fsync; durable ones end it
            async with self._io:
                await self._tick()

    async def _sleep(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._wake.wait()
        self._wake = anyio.Event()

    def _checkpoint_due_in(self) -> float:
        if self.checkpoints is None or not self._since_checkpoint:
            return math.inf
        return max(0.0, self._last_checkpoint + self.checkpoints.interval - self.clock())

    def _checkpoint_if_due(self) -> None:
        """Write a checkpoint if records arrived since the last and its interval has passed.

        Raises:
            OSError: it was not written.
        """
        if self._checkpoint_due_in() == 0:
            self._append_checkpoint()

    async def _tick(self) -> None:
        if not self.healthy:
            with contextlib.suppress(OSError):
                self._recover()
            return
        try:
            self._checkpoint_if_due()
        except OSError as exc:
            self._failed(exc)
        if self.seq > self._synced or self._retired or self._urgent:
            await self._sync()
        await self._save_checkpoint()

    async def _sync(self) -> None:
        """The flusher's fsync: on the event loop while the disk is fast (`_sync_now`), else in a worker thread."""
        self._sync_requested, self._urgent = False, False
        try:
            if self._inline():
                self._sync_now()
                return
            target, retired, self._retired = self.seq, self._retired, []
            synced, self._synced_event = self._synced_event, anyio.Event()
            try:
                if target > self._synced or retired:  # else a waiter only needs waking: its record is synced already
                    directory = self.path.parent if retired else None
                    self._timed(await anyio.to_thread.run_sync(_fsync_all, retired, self._fd, directory))
                    self._synced = max(self._synced, target)
            finally:
                synced.set()
        except OSError as exc:
            self._failed(exc)

    async def _save_checkpoint(self) -> None:
        signed = self._unsaved
        if signed is None or self.checkpoints is None or self._synced <= signed["head_seq"]:
            return
        self._unsaved = None
        try:
            await self.checkpoints.save(self.instance, signed, self.clock())
        except Unavailable as exc:
            log.warning("audit checkpoint at seq %d not saved in the store: %s", signed["head_seq"], exc)

    # ------------------------------------------------------------ failure and recovery

    def _failed(self, exc: OSError) -> None:
        if self.healthy:
            self.healthy = False
            self.error = str(exc) or type(exc).__name__
            self._down_since = self.clock()
            metrics.HEALTHY.set(value=0)
            log.error("audit sink cannot write; refusing calls until it recovers: %s", self.error)
            # Wake the durable records waiting for an fsync: they find the sink down and refuse their calls.
            # (The sync after recovery covers only the reopened file, never what they wrote.)
            synced, self._synced_event = self._synced_event, anyio.Event()
            synced.set()

    def _recover(self) -> None:
        """Reopen the path, write what was held and an `audit.recovered` record, fsync.

        Raises:
            OSError: the sink still cannot write.
        """
        self._close_files()
        self._open_file()
        self._resume()
        while self._held:
            self._append(self._held[0])
            self._held.popleft()
        self._append(
            {
                "ts": round(self.clock(), 6),
                "event": Event.AUDIT_RECOVERED,
                "gateway": self.instance,
                "error": self.error,
                "down_s": round(self.clock() - self._down_since, 3),
                "refused": self._refused,
                "lost": self._lost,
            }
        )
        self._sync_now()
        self.healthy, self.error, self._refused, self._lost = True, None, 0, 0
        metrics.HEALTHY.set(value=1)
        log.warning("audit sink recovered")

    async def probe(self, *, refusing: bool = False) -> None:
        """Check the sink can write, recovering it if it could not.

        `refusing`: the caller refuses a request if the sink cannot write (the edge does, before any
        record is attempted), so that refusal is counted in the next `audit.recovered`.

        Raises:
            AuditUnavailable: it still cannot.
        """
        async with self._io:
            if self.healthy:
                try:
                    self._check_file()
                except OSError as exc:
                    self._failed(exc)
            if not self.healthy:
                try:
                    self._recover()
                except OSError as exc:
                    if refusing:
                        self._refused += 1
                    raise _unavailable(exc) from None


def _lock_for_writing(fd: int, path: Path) -> None:
    """One writer per chain file: a second gateway process on the same path would fork the chain."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(
            f"{path} is being written by another gateway process; give each process its own instance and audit.path"
        ) from None


def _unavailable(reason: object) -> AuditUnavailable:
    return AuditUnavailable(f"audit sink cannot write: {reason}")


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


def _fsync_all(retired: list[int], fd: int | None, directory: Path | None) -> float:
    """Sync rotated-out files (then close them) and their directory, then the current file; return the seconds taken.

    fdatasync: the data and the size needed to read it back, without the timestamps.
    """
    started = time.perf_counter()
    try:
        for old in retired:
            os.fdatasync(old)
    finally:
        for old in retired:
            with contextlib.suppress(OSError):
                os.close(old)
    if directory is not None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    if fd is None:
        raise OSError("the audit file is closed")
    os.fdatasync(fd)
    return time.perf_counter() - started


def build_audit(
    config: GatewayConfig, keys: KeyRing, store: Store, clock: Callable[[], float], *, operator: bool = False
) -> Audit:
    """The gateway's audit chain; with `operator`, the chain operator commands share (`<audit>-cli.jsonl`)."""
    settings = config.audit
    checkpoints = Checkpoints(keys, store, every=settings.checkpoint_every, interval=settings.checkpoint_interval)
    if operator:
        return Audit(
            cli_path(settings.path), cli_instance(config.instance), checkpoints=checkpoints, clock=clock, shared=True
        )
    return Audit(
        settings.path,
        config.instance,
        fsync=settings.fsync,
        batch_interval=settings.batch_interval,
        rotate_bytes=settings.rotate_bytes,
        rotate_interval=settings.rotate_interval,
        checkpoints=checkpoints,
        clock=clock,
    )
