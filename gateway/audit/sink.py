"""The one audit sink interface, and which sink a process writes through.

Every component records through `Audit`: `emit` one record (with `durable`,
only once it is on disk), and `probe` whether records can be written. Two sinks
implement it, each over the same hash-chain file writer (chainfile.py):

- `GatewaySink` (gateway_sink.py): the gateway process's own chain; group
  commit (commit.py), records held while the file cannot be written,
  recovery, rotation;
- `OperatorSink` (operator_sink.py): the chain every operator command (a CLI
  process) appends to under a file lock, one fsynced record at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.checkpoints import Checkpoints
from gateway.audit.events import Event
from gateway.audit.files import cli_instance, cli_path
from gateway.audit.gateway_sink import GatewaySink
from gateway.audit.operator_sink import OperatorSink
from gateway.config.files import GatewayConfig
from gateway.identity.keys import KeyRing
from gateway.store.base import Store


class Audit(Protocol):
    """An audit chain that records are appended to."""

    @property
    def path(self) -> Path:
        """The chain's active file."""

    @property
    def instance(self) -> str:
        """The chain's name: the `gateway` field of its records."""

    @property
    def healthy(self) -> bool:
        """Whether records can be written (false: durable ones are refused until the sink recovers)."""

    async def emit(self, event: Event, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one record; with `durable`, return only once it is on disk.

        Raises:
            AuditUnavailable: a durable record could not be written (any record, for operator commands).
        """

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Write the last checkpoint, fsync and close."""

    def run(self) -> contextlib.AbstractAsyncContextManager[Audit]:
        """Open the sink (and run what it needs in the background) for the context; close it at exit."""

    async def probe(self, *, refusing: bool = False) -> None:
        """Check the sink can write, recovering it if it could not.

        `refusing`: the caller refuses a request if it cannot, so that refusal is counted.

        Raises:
            AuditUnavailable: it still cannot.
        """


def build_audit(
    config: GatewayConfig,
    keys: KeyRing,
    store: Store,
    clock: Callable[[], float],
    *,
    operator: bool = False,
    observe: Callable[[dict[str, Any]], None] | None = None,
) -> Audit:
    """The gateway's audit chain; with `operator`, the chain operator commands share (`<audit>-cli.jsonl`).

    `observe` reads each record the gateway's sink writes (telemetry); operator commands export none."""
    settings = config.audit
    checkpoints = Checkpoints(keys, store, every=settings.checkpoint_every, interval=settings.checkpoint_interval)
    if operator:
        return OperatorSink(
            cli_path(settings.path), cli_instance(config.instance), checkpoints=checkpoints, clock=clock
        )
    return GatewaySink(
        settings.path,
        config.instance,
        fsync=settings.fsync,
        batch_interval=settings.batch_interval,
        rotate_bytes=settings.rotate_bytes,
        rotate_interval=settings.rotate_interval,
        checkpoints=checkpoints,
        clock=clock,
        observe=observe,
    )
