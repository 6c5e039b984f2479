"""`mcp-gateway agents ...`: agent identities and their credentials."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.commands._context import opened, operator, require, run
from gateway.config import AGENT_ID
from gateway.errors import GatewayError
from gateway.identity.credentials import generate_secret, hash_secret
from gateway.store.base import AgentRecord


def _agent_id(value: str) -> str:
    if not AGENT_ID.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} must match {AGENT_ID.pattern}")
    return value


def _email(value: str) -> str:
    if "@" not in value or value.startswith("@") or value.endswith("@") or " " in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not an email address")
    return value


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("agents", help="agent identities").add_subparsers(dest="action", required=True)

    create = group.add_parser("create", parents=[common], help="create an agent and print its secret once")
    create.add_argument("id", type=_agent_id)
    create.add_argument("--owner", required=True, type=_email)
    create.add_argument("--cost-center", metavar="CC")
    create.set_defaults(run=_create)

    list_ = group.add_parser("list", parents=[common], help="list agents")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(run=_list)

    for name, helptext, handler in (
        ("disable", "disable an agent and revoke its live sessions", _disable),
        ("enable", "re-enable a disabled agent", _enable),
        ("rotate", "issue a new secret (the old one stops working) and print it once", _rotate),
    ):
        sub = group.add_parser(name, parents=[common], help=helptext)
        sub.add_argument("id", type=_agent_id)
        sub.set_defaults(run=handler)


def _create(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            require(args.id not in gw.agents.specs, f"agent {args.id!r} is defined in agents.yaml; edit it there")
            secret = generate_secret()
            record = AgentRecord(
                id=args.id, owner=args.owner, cost_center=args.cost_center, source="store",
                created_at=gw.clock(), secret_hash=hash_secret(gw.credential_key, secret),
            )
            require(await gw.store.create_agent(record), f"agent {args.id!r} already exists")
            await gw.audit.emit("agent.created", durable=True, agent=args.id, owner=args.owner,
                                cost_center=args.cost_center, actor=operator())
        print(secret)
        return 0

    return run(body)


def _list(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            records = await gw.store.list_agents()
        rows = [
            {"id": r.id, "owner": r.owner, "cost_center": r.cost_center, "source": r.source,
             "disabled": r.disabled or bool(gw.agents.specs.get(r.id) and gw.agents.specs[r.id].disabled),
             "has_secret": r.secret_hash is not None, "private_key_jwt": bool(r.jwks)}
            for r in records
        ]
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'AGENT':<24} {'OWNER':<28} {'SOURCE':<7} {'STATE':<9} CREDENTIAL")
        for r in rows:
            credential = "secret" if r["has_secret"] else ("key" if r["private_key_jwt"] else "-")
            state = "disabled" if r["disabled"] else "enabled"
            print(f"{r['id']:<24} {r['owner']:<28} {r['source']:<7} {state:<9} {credential}")
        return 0

    return run(body)


async def _known(gw: Any, agent_id: str) -> None:
    if await gw.store.get_agent(agent_id) is None:
        raise GatewayError(f"no agent {agent_id!r}")


def _disable(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            await _known(gw, args.id)
            await gw.store.update_agent(args.id, disabled=True)
            await gw.audit.emit("agent.disabled", durable=True, agent=args.id, actor=operator())
            sids = await gw.sessions.end_agent(args.id, "revoked", actor=operator())
        print(f"disabled {args.id}; revoked {len(sids)} session(s)")
        return 0

    return run(body)


def _enable(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            await _known(gw, args.id)
            await gw.store.update_agent(args.id, disabled=False)
            await gw.audit.emit("agent.enabled", durable=True, agent=args.id, actor=operator())
        print(f"enabled {args.id}")
        return 0

    return run(body)


def _rotate(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with opened(args) as gw:
            await _known(gw, args.id)
            secret = generate_secret()
            await gw.store.update_agent(args.id, secret_hash=hash_secret(gw.credential_key, secret))
            await gw.audit.emit("agent.secret_rotated", durable=True, agent=args.id, actor=operator())
        print(secret)
        return 0

    return run(body)
