"""CLI command groups; each module registers its subcommands on the root parser.

Groups are imported by name, and only the one being run is imported when the
command line names it: `serve` then carries none of the operator commands'
modules (reports, lint, verification) in the gateway's memory.
"""

from __future__ import annotations

COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.commands.serve", "run the gateway"),
    "agents": ("gateway.commands.agents", "agent identities"),
    "sessions": ("gateway.commands.sessions", "agent sessions"),
    "keys": ("gateway.commands.keys", "signing keys"),
    "manifests": ("gateway.commands.manifests", "tool manifests"),
    "report": ("gateway.commands.report", "chargeback and evidence from the audit stream"),
    "audit": ("gateway.commands.audit", "the audit stream"),
}
