"""The `mcp-gateway` command: parse arguments, run one command, exit with a clear status.

Every command takes `--config PATH` (default ./gateway.yaml). Bad input exits 2
with one line naming what is wrong; a failed operation exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway.commands import COMMAND_GROUPS
from gateway.errors import GatewayError
from gateway.terminal import safe


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with `only`, just that command group (the others are not imported)."""
    root = _Parser(prog="mcp-gateway", description="MCP identity gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="gateway.yaml", metavar="PATH", help="gateway.yaml (default: %(default)s)")
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMAND_GROUPS.items():
        if only is None or name == only:
            importlib.import_module(module).register(commands, common)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv[0] if argv and argv[0] in COMMAND_GROUPS else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except GatewayError as exc:
        sys.stderr.write(f"mcp-gateway: error: {safe(str(exc))}\n")  # may quote what a tool server said
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
