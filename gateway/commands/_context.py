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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from gateway.config.files import GatewayConfig, load_gateway_config
from gateway.store import Store, open_store

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.operations import Operations

T = TypeVar("T")


def operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextlib.asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Gateway]:
    """A gateway's collaborators, opened for one operator command (no upstreams started)."""
    from gateway.app import build_gateway  # the MCP SDK with it: only commands that change state pay for it

    config = load_gateway_config(Path(args.config))
    gateway = build_gateway(config, manifests={}, operator=True)
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


def operate(args: argparse.Namespace, action: Callable[[Operations], Awaitable[T]]) -> T:
    """Run one operator action on an opened gateway and return its result once the gateway is closed.

    GatewayErrors propagate to main() for the one-line error.
    """

    async def body() -> T:
        async with opened(args) as gw:
            return await action(gw.operations(operator()))

    return anyio.run(body)


def query(args: argparse.Namespace, read: Callable[[Store, GatewayConfig, float], Awaitable[T]]) -> T:
    """Run a read-only query on the store alone: no keys, no audit chain, no MCP SDK (a fast `list`)."""
    config = load_gateway_config(Path(args.config))

    async def body() -> T:
        store = open_store(config)
        await store.open()
        try:
            return await read(store, config, time.time())
        finally:
            await store.close()

    return anyio.run(body)


__all__ = ["opened", "operate", "operator", "query", "run"]
