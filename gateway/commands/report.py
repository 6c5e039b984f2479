"""`mcp-gateway report`: chargeback and evidence from the audit stream."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.audit.files import audit_files
from gateway.config import load_gateway_config
from gateway.durations import moment_argument
from gateway.errors import GatewayError
from gateway.report import FORMATS, GROUPS, build, read_records, render
from gateway.report_focus import render_focus


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", parents=[common], help="chargeback and evidence from the audit stream")
    report.add_argument("audit", nargs="*", type=Path, metavar="AUDIT",
                        help="audit files to read, e.g. each replica's (with their rotated and operator files); "
                             "default: this gateway's")
    report.add_argument("--by", choices=GROUPS, default="agent", help="group rows by (default: %(default)s)")
    report.add_argument("--since", type=moment_argument, metavar="WHEN",
                        help="ISO 8601 date/time (UTC) or a duration ago: 7d")
    report.add_argument("--until", type=moment_argument, metavar="WHEN",
                        help="end of the period (exclusive); default now")
    report.add_argument("--format", choices=[*FORMATS, "focus"], default="table",
                        help="focus: FOCUS 1.2 CSV, one row per day, session and tool or model (default: %(default)s)")
    report.add_argument("--output", metavar="PATH", help="write the report here instead of standard output")
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise GatewayError("--since must be before --until")
    for stream in args.audit:
        if not stream.is_file():
            raise GatewayError(f"{stream}: no audit file there")
    config_path = Path(args.config)
    wants_config = not args.audit or (args.format == "focus" and config_path.exists())  # focus: the account
    config = load_gateway_config(config_path) if wants_config else None
    streams = args.audit if args.audit or config is None else [config.audit.path]
    files = sorted({file for stream in streams for file in audit_files(stream)})
    records, skipped = read_records(files)
    report = build(records, args.by, args.since, args.until, [str(f) for f in files], skipped)
    if args.format == "focus":  # billed to this gateway deployment, one sub account per cost center
        text = render_focus(records, args.since, args.until, config.public_url if config else "mcp-gateway")
    else:
        text = render(report, args.format)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {args.format} report ({len(report.rows)} rows) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if skipped:
        print(f"warning: skipped {skipped} line(s) that are not audit records", file=sys.stderr)
    if report.invalid_values:
        print(f"warning: left out {report.invalid_values} amount(s) that are negative, too large or not numbers",
              file=sys.stderr)
    return 0
