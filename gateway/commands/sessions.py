"""`mcp-gateway sessions ...`: open, list, close, revoke and resume agent sessions."""

from __future__ import annotations

import argparse
import json
from typing import Any, get_args

from gateway.commands._context import operate, query
from gateway.config.durations import parse_duration
from gateway.operations import session_json
from gateway.store.base import SessionState
from gateway.terminal import safe

STATES = get_args(SessionState)


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("sessions", help="agent sessions").add_subparsers(dest="action", required=True)

    open_ = group.add_parser("open", parents=[common], help="open a session and print its token")
    open_.add_argument("--agent", required=True)
    open_.add_argument("--on-behalf-of", metavar="SUBJECT")
    open_.add_argument("--task", metavar="TEXT")
    open_.add_argument("--ttl", type=_duration, metavar="DURATION", help="e.g. 30m, 8h (clamped to the grant)")
    open_.add_argument("--json", action="store_true", help="print the session as JSON, token included")
    open_.set_defaults(run=_open)

    list_ = group.add_parser("list", parents=[common], help="list sessions")
    list_.add_argument("--agent")
    list_.add_argument("--state", choices=STATES)
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(run=_list)

    close = group.add_parser("close", parents=[common], help="close a session (the task is done)")
    close.add_argument("sid")
    close.set_defaults(run=_close)

    revoke = group.add_parser("revoke", parents=[common], help="revoke a session, or every session of an agent")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("sid", nargs="?")
    target.add_argument("--agent")
    revoke.set_defaults(run=_revoke)

    resume = group.add_parser("resume", parents=[common], help="lift a budget stop")
    resume.add_argument("sid")
    resume.add_argument("--add-tokens", type=_count, default=0, metavar="N")
    resume.add_argument("--add-calls", type=_count, default=0, metavar="N")
    resume.set_defaults(run=_resume)


def _open(args: argparse.Namespace) -> int:
    session, token = operate(
        args,
        lambda ops: ops.sessions.open(
            args.agent,
            on_behalf_of=args.on_behalf_of,
            task=args.task,
            ttl=args.ttl,
            via=ops.actor,
            credential="operator",
        ),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "session_id": session.sid,
                    "agent": session.agent,
                    "expires_at": session.expires_at,
                    "access_token": token,
                }
            )
        )
    else:
        print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    sessions = query(args, lambda store, _config, now: store.list_sessions(args.agent, args.state, now=now))
    if args.json:
        print(json.dumps([session_json(s) for s in sessions], default=str))
        return 0
    print(f"{'SESSION':<28} {'AGENT':<20} {'STATE':<10} {'CALLS':>6} {'TOKENS':>8}  TASK")
    for s in sessions:
        print(f"{safe(s.sid):<28} {safe(s.agent):<20} {s.state:<10} {s.calls:>6} {s.tokens:>8}  {safe(s.task or '')}")
    return 0


def _close(args: argparse.Namespace) -> int:
    return _end(args, "closed")


def _revoke(args: argparse.Namespace) -> int:
    if args.agent:
        sids = operate(args, lambda ops: ops.revoke_agent_sessions(args.agent))
        print(f"revoked {len(sids)} session(s) of {args.agent}")
        return 0
    return _end(args, "revoked")


def _end(args: argparse.Namespace, state: SessionState) -> int:
    operate(args, lambda ops: ops.end_session(args.sid, state))
    print(f"{state} {args.sid}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    session = operate(args, lambda ops: ops.resume_session(args.sid, args.add_calls, args.add_tokens))
    print(f"resumed {args.sid}: calls limit {session.calls_limit}, tokens limit {session.tokens_limit}")
    return 0
