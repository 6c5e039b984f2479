"""The operator commands' sink: one chain (`<audit>-cli.jsonl`) that every CLI process appends to.

Each operator command is a short process that changes state (creates an agent,
revokes a session) and records it. Several may run at once, so each record is
written under the file's lock, after re-reading the head another process may
have moved on, and fsynced before `emit` returns: a record that cannot be
written fails the command (`AuditUnavailable`), which then changes nothing.
There is no flusher, no holding and no recovery: the next command opens afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.audit import metrics
from gateway.audit.chainfile import ChainFile, unavailable
from gateway.audit.checkpoints import Checkpoints
from gateway.audit.commit import fsync_all
from gateway.audit.events import Event
from gateway.audit.records import draft

log = logging.getLogger("gateway.audit")


class OperatorSink:
    """Appends to the chain operator commands share, under its file lock, one fsynced record at a time."""

    def __init__(
        self, path: Path, instance: str, *, checkpoints: Checkpoints | None, clock: Callable[[], float]
    ) -> None:
        self.chain = ChainFile(path, instance, checkpoints=checkpoints, clock=clock, exclusive=False)
        self.path = path
        self.instance = instance
        self.clock = clock
        self.healthy = True  # false once a checkpoint could not be written: close writes none
        self._synced = 0

    async def open(self) -> None:
        await self.chain.open()
        metrics.HEALTHY.set(value=1)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[OperatorSink]:
        """Open the sink; at exit write the last checkpoint and close (every record is fsynced as it is written)."""
        await self.open()
        try:
            yield self
        finally:
            await self.close()

    async def close(self) -> None:
        chain = self.chain
        if chain.fd is None:
            return
        with self._locked():
            try:
                chain.resume()
                if self.healthy and chain.checkpoints is not None and chain.since_checkpoint:
                    chain.append_checkpoint()
                self._sync()
            except OSError as exc:
                self._failed(exc)
            await chain.save_checkpoint(self._synced)
        chain.close_files()

    async def emit(self, event: Event, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it (every operator record is durable: `durable` changes nothing).

        Raises:
            AuditUnavailable: the record could not be written.
        """
        record = draft(round(self.clock(), 6), event, self.instance, fields)
        try:
            with self._locked():
                self.chain.resume()
                self.chain.check()
                late = self.chain.append(record)
                if late is not None:
                    self._failed(late)
                self._sync()
        except OSError as exc:
            raise unavailable(exc) from exc
        metrics.observe(record)
        return record

    async def probe(self, *, refusing: bool = False) -> None:
        """Check the path still names the file this command writes.

        Raises:
            AuditUnavailable: it does not (the command fails; the next one opens the path afresh).
        """
        try:
            self.chain.check()
        except OSError as exc:
            raise unavailable(exc) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self.chain.fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _sync(self) -> None:
        if self.chain.seq > self._synced:
            metrics.WRITES.observe(fsync_all([], self.chain.fd, None))
            self._synced = self.chain.seq

    def _failed(self, exc: OSError) -> None:
        if self.healthy:
            self.healthy = False
            log.error("audit sink cannot write: %s", exc)
