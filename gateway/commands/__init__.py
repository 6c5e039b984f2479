"""CLI command groups; each module registers its subcommands on the root parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway.commands import agents, audit, keys, manifests, report, serve, sessions

Register = Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]  # type: ignore[type-arg]

COMMAND_GROUPS: list[Register] = [
    serve.register,
    agents.register,
    sessions.register,
    keys.register,
    manifests.register,
    report.register,
    audit.register,
]
