"""The gateway's sink: its own chain, written before forwarding, failing closed.

`emit` chains and appends its record at once: one write(2) on the event loop,
which makes it visible to readers and safe from a crash of the process.
Durability is group-committed (commit.py): only a `durable` record (a tool.call
before its upstream is called, an operator change) waits for the fsync that
covers it. With `fsync: batch` nothing waits for an fsync.

Fail closed: a durable record that cannot be written raises `AuditUnavailable`
and the caller refuses the request; other records are held in memory and
written, in order, once the sink recovers. Before writing a durable record the
sink checks that its path still names its open file (moved, deleted or replaced
is a failure), so no call is forwarded on a record written where nobody will
find it; before other records, at most every CHECK_EVERY seconds (one stat per
record was a cost on every call): one written within that interval of a move
lands in the moved file, chained (a deleted file takes it along, and verify
names the gap). It recovers by reopening the path, continuing the chain from the
highest point it knows, and recording `audit.recovered`. `probe` always checks.

Signed checkpoints are written every N records, every T seconds while records
arrive, and at close; each is saved in the store once the file holding it is
on disk.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from gateway.audit import metrics
from gateway.audit.chainfile import ChainFile, unavailable
from gateway.audit.checkpoints import Checkpoints
from gateway.audit.commit import GroupCommit
from gateway.audit.events import Event
from gateway.audit.records import draft

log = logging.getLogger("gateway.audit")

MAX_HELD = 10_000  # records held in memory while the sink is down; beyond this the oldest are counted as lost
RETRY_EVERY = 1.0  # seconds between recovery attempts while the sink is down
CHECK_EVERY = 0.05  # seconds (on the sink's clock) between checks that the path names the open file (not durable)


class GatewaySink:
    """The gateway process's audit chain: one writer, group-committed, held records while down."""

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
        observe: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.chain = ChainFile(
            path,
            instance,
            checkpoints=checkpoints,
            clock=clock,
            exclusive=True,
            rotate_bytes=rotate_bytes,
            rotate_interval=rotate_interval,
            on_rotated=self._rotated,
        )
        self.commit = GroupCommit(self.chain, batch_interval=batch_interval)
        self.path = path
        self.instance = instance
        self.clock = clock
        self.fsync_always = fsync == "always"
        self.observe = observe  # another reader of each record (telemetry)
        self.healthy = True
        self.error: str | None = None
        self._held: deque[dict[str, Any]] = deque()
        self._lost = 0
        self._refused = 0
        self._down_since = 0.0
        self._checked = 0.0  # when the path last named the open file

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self.chain.open()
        self._checked = self.clock()
        self.commit.reset()
        metrics.HEALTHY.set(value=1)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[GatewaySink]:
        """Open the sink and run its flusher; at exit write the last checkpoint and close."""
        await self.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.commit.flusher, self._idle, self._tick)
                self.commit.running = True
                try:
                    yield self
                finally:
                    self.commit.running = False
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        chain = self.chain
        if chain.fd is None:
            return
        async with self.commit.io:
            try:
                if self.healthy and chain.checkpoints is not None and chain.since_checkpoint:
                    chain.append_checkpoint()
                self.commit.sync_now()
            except OSError as exc:
                self._failed(exc)
            await chain.save_checkpoint(self.commit.synced)
            chain.close_files()
        self.commit.wake_waiters()  # anyone still waiting finds the sink closed
        if self._held:
            log.error("closing with %d audit records that could not be written: %s", len(self._held), self.error)

    # ------------------------------------------------------------ writing

    async def emit(self, event: Event, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one record; with `durable`, return only once it is on disk.

        Raises:
            AuditUnavailable: a durable record could not be written.
        """
        record = draft(round(self.clock(), 6), event, self.instance, fields)
        if self._append_or_hold(record, durable):
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
            self._append(record, durable)
            return True
        except OSError as exc:
            self._failed(exc)
            if durable:
                self._refused += 1
                raise unavailable(self.error) from None
            self._hold(record)
            return False

    def _append(self, record: dict[str, Any], durable: bool = False) -> None:
        """Check the file (durable: always, else if it is time to), then chain and write the record
        (and a checkpoint when one is due).

        Raises:
            OSError: the record was not written.
        """
        now = self.clock()
        if durable or not self._checked <= now < self._checked + CHECK_EVERY:  # a clock set back checks at once
            self.chain.check()
            self._checked = now
        late = self.chain.append(record)
        if late is not None:  # the record itself is written; the next one will find the sink down
            self._failed(late)

    async def _apply_fsync_policy(self, seq: int, durable: bool) -> None:
        """After a write: wait for the fsync that covers it (durable, fsync always), or have one come soon."""
        if not self.commit.running:
            if durable or self.fsync_always:
                self._sync_or_refuse()
        elif durable and self.fsync_always:
            await self._wait_synced(seq)
        else:
            self.commit.request()

    def _hold(self, record: dict[str, Any]) -> None:
        if len(self._held) >= MAX_HELD:
            self._held.popleft()
            self._lost += 1
        self._held.append(record)

    def _rotated(self) -> None:
        """Without a flusher, a rotated-out file is synced at once (nothing else would)."""
        if not self.commit.running:
            self.commit.sync_now()

    # ------------------------------------------------------------ durability

    def _sync_or_refuse(self) -> None:
        try:
            self.commit.sync_now()
        except OSError as exc:
            self._failed(exc)
            self._refused += 1
            raise unavailable(exc) from None

    async def _wait_synced(self, seq: int) -> None:
        commit = self.commit
        while commit.synced < seq:
            if not self.healthy:
                self._refused += 1
                raise unavailable(self.error)
            if commit.inline() and not commit.io.locked() and (await commit.alone() or not commit.running):
                if commit.synced < seq and not commit.io.locked():
                    self._commit()  # synchronous: nothing else runs while it fsyncs, so no lock is needed
                    await self.chain.save_checkpoint(commit.synced)
                continue
            await commit.wait_for_flusher()  # a slow disk, or others writing: the loop serves them meanwhile

    def _commit(self) -> None:
        """On the event loop: a checkpoint if its interval has passed, then the fsync that makes it all durable."""
        try:
            self._checkpoint_if_due()
            self.commit.sync_now()
        except OSError as exc:
            self._failed(exc)

    def _checkpoint_if_due(self) -> None:
        """Write a checkpoint if records arrived since the last and its interval has passed.

        Raises:
            OSError: it was not written.
        """
        if self.chain.checkpoint_due_in() == 0:
            self.chain.append_checkpoint()

    def _idle(self) -> float:
        """How long the flusher sleeps unless woken: until the next recovery attempt, or a checkpoint is due."""
        return RETRY_EVERY if not self.healthy else self.chain.checkpoint_due_in()

    async def _tick(self) -> None:
        if not self.healthy:
            with contextlib.suppress(OSError):
                self._recover()
            return
        try:
            self._checkpoint_if_due()
        except OSError as exc:
            self._failed(exc)
        if self.chain.seq > self.commit.synced or self.chain.retired or self.commit.urgent:
            try:
                await self.commit.sync()
            except OSError as exc:
                self._failed(exc)
        await self.chain.save_checkpoint(self.commit.synced)

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
            self.commit.wake_waiters()

    def _recover(self) -> None:
        """Reopen the path, write what was held and an `audit.recovered` record, fsync.

        Raises:
            OSError: the sink still cannot write.
        """
        chain = self.chain
        chain.close_files()
        chain.open_file()
        chain.resume()
        self._checked = self.clock()
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
        self.commit.sync_now()
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
        async with self.commit.io:
            if self.healthy:
                try:
                    self.chain.check()
                    self._checked = self.clock()
                except OSError as exc:
                    self._failed(exc)
            if not self.healthy:
                try:
                    self._recover()
                except OSError as exc:
                    if refusing:
                        self._refused += 1
                    raise unavailable(exc) from None
