"""The `mcp-gateway` command: parse arguments, run one command, exit with a clear status.

Every command takes `--config PATH` (default ./gateway.yaml). Bad input exits 2
with one line naming what is wrong; a failed operation exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway.commands import COMMAND_GROUPS
from gateway.errors import GatewayError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="mcp-gateway", description="MCP identity gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="gateway.yaml", metavar="PATH", help="gateway.yaml (default: %(default)s)")
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in COMMAND_GROUPS:
        register(commands, common)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except GatewayError as exc:
        sys.stderr.write(f"mcp-gateway: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
