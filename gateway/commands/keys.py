"""`mcp-gateway keys rotate`: a new signing key, with overlap for the old one's tokens."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.audit.events import Event
from gateway.commands._context import opened, operator, run


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("keys", help="signing keys").add_subparsers(dest="action", required=True)
    rotate = group.add_parser("rotate", parents=[common], help="start signing with a new key")
    rotate.set_defaults(run=_rotate)


def _rotate(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            old = gw.keys.active_kid
            overlap = await gw.max_session_lifetime()
            new = gw.keys.rotate(gw.clock(), overlap)
            await gw.audit.emit(
                Event.KEY_ROTATED, durable=True, actor=operator(), kid=new, retired_kid=old, overlap_s=overlap
            )
        print(f"signing with {new}; {old} verifies its tokens for {overlap:g}s more")
        return 0

    return run(body)
