"""The `mcp-gateway` command: parse arguments, run one command, exit with a clear status.

Every command takes `--config PATH`; without it the config is `$GATEWAY_CONFIG`, else
./gateway.yaml. Bad input exits 2 with one line naming what is wrong; a failed
operation exits 1.

Only the command group being run is imported: `mcp-gateway --help` lists the
groups from `COMMAND_GROUPS` without importing any of them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway.commands import COMMAND_GROUPS
from gateway.errors import ConfigNotFound, GatewayError
from gateway.terminal import safe

CONFIG_ENV = "GATEWAY_CONFIG"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with `only`, just that command group (the others are not imported)."""
    root = _Parser(prog="mcp-gateway", description="MCP identity gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help=f"gateway.yaml (default: ${CONFIG_ENV}, else ./gateway.yaml)")
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, summary) in COMMAND_GROUPS.items():
        if name == only:
            importlib.import_module(module).register(commands, common)
        else:  # listed for --help and for the error naming the choices; never run
            commands.add_parser(name, help=summary)
    return root


def config_path(given: str | None) -> str:
    """--config, else $GATEWAY_CONFIG, else ./gateway.yaml."""
    return given or os.environ.get(CONFIG_ENV) or "gateway.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv[0] if argv and argv[0] in COMMAND_GROUPS else None).parse_args(argv)
    if hasattr(args, "config") and not getattr(args, "config_optional", False):
        args.config = config_path(args.config)
    try:
        return int(args.run(args) or 0)
    except ConfigNotFound as exc:
        sys.stderr.write(
            f"mcp-gateway: error: {exc} (the config is --config PATH, else ${CONFIG_ENV}, else ./gateway.yaml)\n"
        )
        return 1
    except GatewayError as exc:
        sys.stderr.write(f"mcp-gateway: error: {safe(str(exc))}\n")  # may quote what a tool server said
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
