"""`mcp-gateway manifests validate`: check tool manifests without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_gateway_config
from gateway.errors import ConfigError
from gateway.manifests import describe, load_manifest, manifest_files


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("manifests", help="tool manifests").add_subparsers(dest="action", required=True)
    validate = group.add_parser("validate", parents=[common], help="validate manifests")
    validate.add_argument("dir", nargs="?", type=Path, help="manifests directory (default: from gateway.yaml)")
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")
    validate.set_defaults(run=_validate)


def _validate(args: argparse.Namespace) -> int:
    config = load_gateway_config(Path(args.config))
    directory = args.dir or config.manifests
    errors = 0
    files = manifest_files(directory)
    for path in files:
        try:
            spec = load_manifest(path, config)
        except ConfigError as exc:
            errors += 1
            sys.stderr.write(f"error: {exc}\n")
            continue
        info = describe(spec)
        print(f"ok: {path.name}: {info['server']} ({info['transport']}, {info['isolation']}) {info['target']}")
    if errors:
        raise ConfigError(f"{errors} of {len(files)} manifest(s) invalid")
    return 0
