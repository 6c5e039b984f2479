"""Group commit: one fsync makes every record written before it durable, and wakes all who wait for it.

Records are written at once (chainfile.py); this decides when they reach the
disk. A writer that needs its record durable waits for the fsync that covers
it. While the disk is fast (a moving average under INLINE_FSYNC_MAX) a writer
alone fsyncs on the event loop itself, after yielding once to let the tasks
ready to write share it: cheaper than a hop to a thread. When other tasks wrote
while it yielded, or the disk is slower, the fsync goes to the flusher, which
runs it in a worker thread while the event loop serves the others (whose
records the next fsync then covers). The flusher also fsyncs everything else at
most `batch_interval` after it was written.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel

from gateway.audit import metrics
from gateway.audit.chainfile import ChainFile

INLINE_FSYNC_MAX = 0.002  # while fsyncs take less than this (moving average), a lone writer runs its own on the loop:
#                           far cheaper than a thread hop; a slower disk moves them to a worker thread


class GroupCommit:
    """The fsyncs of one chain file, shared by every record written since the last."""

    def __init__(self, chain: ChainFile, *, batch_interval: float) -> None:
        self.chain = chain
        self.batch_interval = batch_interval
        self.synced = 0  # seq of the last record known to be on disk
        self.running = False  # a flusher runs (else every fsync is inline)
        self.urgent = False  # a writer waits for the flusher's fsync
        self.io = anyio.Lock()  # file changes (recovery, close) never overlap an fsync
        self._requested = False
        self._fsync_seconds = 0.0  # moving average of recent fsync durations
        self._wake = anyio.Event()
        self._synced_event = anyio.Event()

    def reset(self) -> None:
        """New events for a new run (they belong to the event loop that runs the sink)."""
        self._wake, self._synced_event = anyio.Event(), anyio.Event()

    def inline(self) -> bool:
        """Whether fsyncs are fast enough to run on the event loop (no flusher also means inline)."""
        return not self.running or self._fsync_seconds < INLINE_FSYNC_MAX

    def sync_now(self) -> None:
        """fsync on this thread: everything written so far becomes durable, and its waiters are woken.

        Raises:
            OSError: the fsync failed (its waiters are woken all the same; the caller records the failure).
        """
        chain = self.chain
        retired, chain.retired = chain.retired, []
        synced, self._synced_event = self._synced_event, anyio.Event()
        try:
            if chain.seq > self.synced or retired:  # else a waiter only needs waking: its record is synced already
                self._timed(fsync_all(retired, chain.fd, chain.path.parent if retired else None))
                self.synced = chain.seq
        finally:
            synced.set()

    async def sync(self) -> None:
        """The flusher's fsync: on the event loop while the disk is fast (`sync_now`) and no writer waits for it,
        else in a worker thread.

        Raises:
            OSError: the fsync failed (its waiters are woken all the same).
        """
        urgent, self._requested, self.urgent = self.urgent, False, False
        if self.inline() and not urgent:  # a writer waiting: in a thread, while the loop serves the others
            self.sync_now()
            return
        chain = self.chain
        target, retired, chain.retired = chain.seq, chain.retired, []
        synced, self._synced_event = self._synced_event, anyio.Event()
        try:
            if target > self.synced or retired:  # else a waiter only needs waking: its record is synced already
                directory = chain.path.parent if retired else None
                self._timed(await anyio.to_thread.run_sync(fsync_all, retired, chain.fd, directory))
                self.synced = max(self.synced, target)
        finally:
            synced.set()

    def wake_waiters(self) -> None:
        """Wake everyone waiting for an fsync without one (the sink failed or closed: they find out why)."""
        synced, self._synced_event = self._synced_event, anyio.Event()
        synced.set()

    def request(self) -> None:
        """Have the flusher fsync soon (within `batch_interval`)."""
        if not self._requested:
            self._requested = True
            self._wake.set()

    async def alone(self) -> bool:
        """Yield once to the tasks that are ready; whether none of them wrote a record meanwhile."""
        written = self.chain.seq
        await anyio.lowlevel.checkpoint()
        return self.chain.seq == written

    async def wait_for_flusher(self) -> None:
        """Wait for the flusher's next fsync, run in a worker thread (or for the sink to fail)."""
        synced = self._synced_event
        self.urgent = True
        self._wake.set()
        await synced.wait()

    async def flusher(self, idle: Callable[[], float], tick: Callable[[], Awaitable[None]]) -> None:
        """Run `tick` (under `io`) when woken, or after `idle()` seconds; a pending batch waits `batch_interval`."""
        while True:
            await self._sleep(idle())
            if self.chain.seq > self.synced and not self.urgent:
                await self._sleep(self.batch_interval)  # let records arriving now share the fsync; durable ones end it
            async with self.io:
                await tick()

    async def _sleep(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._wake.wait()
        self._wake = anyio.Event()

    def _timed(self, elapsed: float) -> None:
        """Record how long the disk took (the fsync alone, never a thread hop: that would make slow look slower)."""
        self._fsync_seconds = 0.8 * self._fsync_seconds + 0.2 * elapsed
        metrics.WRITES.observe(elapsed)


def fsync_all(retired: list[int], fd: int | None, directory: Path | None) -> float:
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
