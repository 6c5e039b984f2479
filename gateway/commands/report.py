"""`mcp-gateway report`: chargeback and evidence from the audit stream."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.audit.files import audit_files
from gateway.config.durations import moment_argument
from gateway.config.files import load_gateway_config
from gateway.errors import GatewayError
from gateway.report.chargeback import FORMATS, GROUPS, build, read_records, render
from gateway.report.focus import render_focus


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", parents=[common], help="chargeback and evidence from the audit stream")
    report.add_argument(
        "audit",
        nargs="*",
        type=Path,
        metavar="AUDIT",
        help="audit files to read, e.g. each replica's (with their rotated and operator files); "
        "default: this gateway's",
    )
    report.add_argument("--by", choices=GROUPS, default="agent", help="group rows by (default: %(default)s)")
    report.add_argument(
        "--since", type=moment_argument, metavar="WHEN", help="ISO 8601 date/time (UTC) or a duration ago: 7d"
    )
    report.add_argument(
        "--until", type=moment_argument, metavar="WHEN", help="end of the period (exclusive); default now"
    )
    report.add_argument(
        "--format",
        choices=[*FORMATS, "focus"],
        default="table",
        help="focus: FOCUS 1.2 CSV, one row per day, session and tool or model (default: %(default)s)",
    )
    report.add_argument("--output", metavar="PATH", help="write the report here instead of standard output")
    report.add_argument(
        "--recertify",
        action="store_true",
        help="access review: per agent its owner, credential and its age, last use, granted tools "
        "never used, sessions and spend (--since defaults to 30d)",
    )
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    if args.recertify:
        return _recertify(args)
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise GatewayError("--since must be before --until")
    for stream in args.audit:
        if not stream.is_file():
            raise GatewayError(f"{stream}: no audit file there")
    config_path = Path(args.config)
    wants_config = not args.audit or (args.format == "focus" and config_path.exists())  # focus: the account
    config = load_gateway_config(config_path) if wants_config else None
    streams = args.audit if args.audit or config is None else [config.audit.path]
    files, records, skipped = _read(streams)
    report = build(records, args.by, args.since, args.until, [str(f) for f in files], skipped)
    if args.format == "focus":  # billed to this gateway deployment, one sub account per cost center
        text = render_focus(records, args.since, args.until, config.public_url if config else "mcp-gateway")
    else:
        text = render(report, args.format)
    _write(args, text, len(report.rows))
    if skipped:
        print(f"warning: skipped {skipped} line(s) that are not audit records", file=sys.stderr)
    if report.invalid_values:
        print(
            f"warning: left out {report.invalid_values} amount(s) that are negative, too large or not numbers",
            file=sys.stderr,
        )
    return 0


def _read(streams: list[Path]) -> tuple[list[Path], list[dict[str, Any]], int]:
    """Every file of the audit streams (rotated ones too), their records, and how many lines were not records."""
    files = sorted({file for stream in streams for file in audit_files(stream)})
    records, skipped = read_records(files)
    return files, records, skipped


def _write(args: argparse.Namespace, text: str, rows: int) -> None:
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {args.format} report ({rows} rows) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _recertify(args: argparse.Namespace) -> int:
    """The access review: the store's agents and sessions (read alone, as `agents list` does) plus the audit."""
    from gateway.commands._context import query
    from gateway.config.files import load_agents
    from gateway.errors import ConfigError
    from gateway.report.recertify import FORMATS as RECERTIFY_FORMATS
    from gateway.report.recertify import Inputs, build_recertification, render_recertification
    from gateway.upstream.manifests import load_manifests

    if args.format not in RECERTIFY_FORMATS:
        raise GatewayError(f"--recertify: --format must be one of {', '.join(RECERTIFY_FORMATS)}")
    config = load_gateway_config(Path(args.config))

    async def read(store: Any, config: Any, now: float) -> tuple[Any, Any, float]:
        return await store.list_agents(), await store.list_sessions(now=now), now

    agents, sessions, now = query(args, read)
    until = args.until if args.until is not None else now
    since = args.since if args.since is not None else until - 30 * 86400
    if since >= until:
        raise GatewayError("--since must be before --until")
    try:
        manifests = load_manifests(config)
    except ConfigError as exc:  # the audit still names the tools that were called
        print(f"warning: manifests not read, granted tools expanded from the audit alone: {exc}", file=sys.stderr)
        manifests = {}
    streams = args.audit or [config.audit.path]
    files, records, skipped = _read(streams)
    inputs = Inputs(agents, load_agents(config.agents), config.agent_defaults, sessions, manifests, records)
    data = build_recertification(inputs, since, until, [str(f) for f in files])
    _write(args, render_recertification(data, args.format), len(data["agents"]))
    if skipped:
        print(f"warning: skipped {skipped} line(s) that are not audit records", file=sys.stderr)
    return 0
