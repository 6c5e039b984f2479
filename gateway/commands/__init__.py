"""CLI command groups; each module registers its subcommands on the root parser.

Groups are imported by name, and only the one being run is imported when the
command line names it: `serve` then carries none of the operator commands'
modules (reports, lint, verification) in the gateway's memory.
"""

from __future__ import annotations

COMMAND_GROUPS: dict[str, str] = {
    "serve": "gateway.commands.serve",
    "agents": "gateway.commands.agents",
    "sessions": "gateway.commands.sessions",
    "keys": "gateway.commands.keys",
    "manifests": "gateway.commands.manifests",
    "report": "gateway.commands.report",
    "audit": "gateway.commands.audit",
}
