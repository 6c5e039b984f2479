"""`mcp-gateway agents ...`: agent identities and their credentials."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.commands._context import operate, query
from gateway.config.files import AGENT_ID, EMAIL, INTERACTIVE_AGENT_ID, GatewayConfig, load_agents, read_yaml
from gateway.errors import ConfigError, OperatorError
from gateway.identity.agents import AgentDirectory
from gateway.operations import agent_rows
from gateway.store import Store
from gateway.terminal import safe


def _agent_id(value: str) -> str:
    if not AGENT_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} must match {AGENT_ID.pattern}")
    return value


def _any_agent_id(value: str) -> str:
    """An agent id, or a sign-in's `<template>:<human>:<client host>` (for show, disable, enable, ...)."""
    if INTERACTIVE_AGENT_ID.fullmatch(value):
        return value
    return _agent_id(value)


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
    create.add_argument(
        "--jwks",
        type=Path,
        metavar="PATH",
        help="a JSON JWK Set of public keys: authenticate with private_key_jwt instead of a secret",
    )
    create.add_argument(
        "--workload-issuer",
        metavar="ISS",
        help="authenticate with this workload_issuers platform's JWT instead of a secret",
    )
    create.add_argument(
        "--workload-subject",
        metavar="SUB",
        help="the JWT's sub, e.g. system:serviceaccount:NS:NAME or spiffe://DOMAIN/PATH",
    )
    for flag, example in (("expires", "2027-01-31"), ("disable-after-idle", "30d"), ("credential-max-age", "90d")):
        create.add_argument(
            f"--{flag}",
            metavar="WHEN" if flag == "expires" else "DURATION",
            help=f"lifecycle, e.g. {example} (default: gateway.yaml agent_defaults)",
        )
    create.set_defaults(run=_create)

    list_ = group.add_parser("list", parents=[common], help="list agents")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(run=_list)

    show = group.add_parser("show", parents=[common], help="show an agent with its grant (YAML)")
    show.add_argument("id", type=_any_agent_id)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_show)

    grant = group.add_parser(
        "grant",
        parents=[common],
        help="replace a CLI- or API-created agent's grant",
        description="Replace the agent's whole grant, from flags or from a YAML file holding what agents.yaml's "
        "`grant:` block holds (same schema, same validation). Live sessions use it from their next "
        "call. Agents defined in agents.yaml are granted there.",
    )
    grant.add_argument("id", type=_agent_id)
    grant.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="a YAML grant (tools, resources, prompts, arguments, budget, alerts); not combined with the other flags",
    )
    grant.add_argument(
        "--tools", action="append", default=[], metavar="SERVER.TOOL", help="a tool or glob (time.*); repeat for more"
    )
    grant.add_argument("--resources", action="append", default=[], metavar="SERVER", help="repeat for more")
    grant.add_argument("--prompts", action="append", default=[], metavar="SERVER", help="repeat for more")
    grant.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a budget limit (session_calls=100, session_ttl=8h, tool_calls.git.git_log=5); repeat",
    )
    grant.add_argument("--alerts", metavar="SHARES", help="budget shares that alert, comma-separated (0.5,0.8,1)")
    grant.set_defaults(run=_grant)

    for name, helptext, handler in (
        ("disable", "disable an agent and revoke its live sessions", _disable),
        ("enable", "re-enable a disabled agent", _enable),
        ("rotate", "issue a new secret (the old one stops working) and print it once", _rotate),
    ):
        sub = group.add_parser(name, parents=[common], help=helptext)
        sub.add_argument("id", type=_any_agent_id)
        sub.set_defaults(run=handler)


def _create(args: argparse.Namespace) -> int:
    jwks = _read_jwks(args.jwks) if args.jwks else None
    if (args.workload_issuer is None) != (args.workload_subject is None):
        raise OperatorError("--workload-issuer and --workload-subject go together")
    workload = {"issuer": args.workload_issuer, "subject": args.workload_subject} if args.workload_issuer else None
    lifecycle = {
        name: value
        for name in ("expires", "disable_after_idle", "credential_max_age")
        if (value := getattr(args, name)) is not None
    }
    secret = operate(
        args, lambda ops: ops.create_agent(args.id, args.owner, args.cost_center, jwks, workload, lifecycle)
    )
    if secret is None:
        print(f"created {args.id} ({'workload' if workload else 'private_key_jwt'})")
    else:
        _print_secret(args.id, secret)
    return 0


def _read_jwks(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OperatorError(f"--jwks {path}: cannot read a JSON key set: {exc}") from None


async def _agent_rows(store: Store, config: GatewayConfig, now: float) -> list[dict[str, Any]]:
    directory = AgentDirectory(store, load_agents(config.agents))
    await directory.sync(now)  # as a gateway start would: agents.yaml's agents are listed even before one ran
    return agent_rows(await store.list_agents(), directory.specs)


def _list(args: argparse.Namespace) -> int:
    rows = query(args, _agent_rows)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'AGENT':<24} {'OWNER':<28} {'SOURCE':<7} {'STATE':<9} CREDENTIAL")
    for r in rows:
        credential = (
            "secret" if r["has_secret"] else ("key" if r["private_key_jwt"] else "workload" if r["workload"] else "-")
        )
        state = "disabled" if r["disabled"] else "enabled"
        print(f"{safe(r['id']):<24} {safe(r['owner']):<28} {safe(r['source']):<7} {state:<9} {credential}")
    return 0


def _show(args: argparse.Namespace) -> int:
    agent = operate(args, lambda ops: ops.show_agent(args.id))
    if args.json:
        print(json.dumps(agent))
    else:
        print(yaml.safe_dump(agent, sort_keys=False), end="")
    return 0


def _grant_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The grant the flags describe; values in --budget are read as YAML scalars (100, 8h, true)."""
    grant: dict[str, Any] = {"tools": args.tools, "resources": args.resources, "prompts": args.prompts}
    budget: dict[str, Any] = {}
    for item in args.budget:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise OperatorError(f"--budget {item!r}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if key.startswith("tool_calls."):
            budget.setdefault("tool_calls", {})[key.removeprefix("tool_calls.")] = parsed
        else:
            budget[key] = parsed
    if budget:
        grant["budget"] = budget
    if args.alerts is not None:
        try:
            grant["alerts"] = [float(share) for share in args.alerts.split(",")]
        except ValueError:
            raise OperatorError(f"--alerts {args.alerts!r}: expected numbers separated by commas") from None
    return grant


def _grant(args: argparse.Namespace) -> int:
    flags = bool(args.tools or args.resources or args.prompts or args.budget or args.alerts is not None)
    if args.file is not None and flags:
        raise OperatorError("--file replaces the whole grant: do not combine it with --tools, --budget ...")
    if args.file is None and not flags:
        raise OperatorError("nothing to grant: give --tools/--resources/--prompts/--budget/--alerts or --file")
    if args.file is not None:
        try:
            raw = read_yaml(args.file)
        except ConfigError as exc:
            raise OperatorError(str(exc)) from None
    else:
        raw = _grant_from_flags(args)
    grant = operate(args, lambda ops: ops.set_grant(args.id, raw, source=str(args.file or "grant")))
    tools = ", ".join(grant.tools) or "no tools"
    print(f"granted {args.id}: {tools} (live sessions use it from their next call)")
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
    _print_secret(args.id, operate(args, lambda ops: ops.rotate_secret(args.id)))
    return 0


def _print_secret(agent: str, secret: str) -> None:
    """The secret alone on stdout (for scripts); the warning on stderr, where a terminal shows it too."""
    sys.stderr.write(f"client secret for {agent}: shown once, store it now (only its hash is kept)\n")
    print(secret)
