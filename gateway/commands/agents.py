"""`mcp-gateway agents ...`: agent identities and their credentials."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.commands._context import operate
from gateway.config import AGENT_ID, EMAIL
from gateway.errors import OperatorError
from gateway.terminal import safe


def _agent_id(value: str) -> str:
    if not AGENT_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} must match {AGENT_ID.pattern}")
    return value


def _email(value: str) -> str:
    if not EMAIL.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an email address")
    return value


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("agents", help="agent identities").add_subparsers(dest="action", required=True)

    create = group.add_parser("create", parents=[common], help="create an agent and print its secret once")
    create.add_argument("id", type=_agent_id)
    create.add_argument("--owner", required=True, type=_email)
    create.add_argument("--cost-center", metavar="CC")
    create.add_argument("--jwks", type=Path, metavar="PATH",
                        help="a JSON JWK Set of public keys: authenticate with private_key_jwt instead of a secret")
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
    jwks = _read_jwks(args.jwks) if args.jwks else None
    secret = operate(args, lambda ops: ops.create_agent(args.id, args.owner, args.cost_center, jwks))
    print(secret if secret is not None else f"created {args.id} (private_key_jwt)")
    return 0


def _read_jwks(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OperatorError(f"--jwks {path}: cannot read a JSON key set: {exc}") from None


def _list(args: argparse.Namespace) -> int:
    rows = operate(args, lambda ops: ops.list_agents())
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'AGENT':<24} {'OWNER':<28} {'SOURCE':<7} {'STATE':<9} CREDENTIAL")
    for r in rows:
        credential = "secret" if r["has_secret"] else ("key" if r["private_key_jwt"] else "-")
        state = "disabled" if r["disabled"] else "enabled"
        print(f"{safe(r['id']):<24} {safe(r['owner']):<28} {safe(r['source']):<7} {state:<9} {credential}")
    return 0


def _disable(args: argparse.Namespace) -> int:
    sids = operate(args, lambda ops: ops.disable_agent(args.id))
    print(f"disabled {args.id}; revoked {len(sids)} session(s)")
    return 0


def _enable(args: argparse.Namespace) -> int:
    operate(args, lambda ops: ops.enable_agent(args.id))
    print(f"enabled {args.id}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    print(operate(args, lambda ops: ops.rotate_secret(args.id)))
    return 0
