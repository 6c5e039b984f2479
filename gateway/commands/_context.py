"""What operator commands share: the loaded config, an opened store, and the operator audit chain.

Operator commands run in their own process beside a running gateway, so they
write their own hash chain (instance `<instance>/cli`, file `<audit>-cli.jsonl`)
instead of interleaving with the gateway's.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio

from gateway.app import Gateway, build_gateway
from gateway.audit import build_audit
from gateway.config import load_gateway_config
from gateway.errors import ConfigError, GatewayError


def operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextlib.asynccontextmanager
async def opened(args: argparse.Namespace, *, with_manifests: bool = False) -> AsyncIterator[Gateway]:
    """A gateway's collaborators, opened for one operator command (no upstreams started)."""
    config = load_gateway_config(Path(args.config))
    gateway = build_gateway(config, manifests=None if with_manifests else {})
    gateway.audit = build_audit(config, gateway.keys, gateway.store, time.time, operator=True)
    gateway.sessions.audit = gateway.audit
    await gateway.store.open()
    try:
        gateway.keys.load()
        await gateway.audit.open()
        await gateway.agents.sync(time.time())
        yield gateway
    finally:
        await gateway.audit.close()
        await gateway.store.close()


def run(fn: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run an async command body; GatewayErrors propagate to main() for the one-line error."""
    result = anyio.run(fn)
    return int(result or 0)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise GatewayError(message)


__all__ = ["ConfigError", "opened", "operator", "require", "run"]
