"""Writing pins: the one code path `manifests pin` and the console's Approve share.

`plan()` compares the definitions a server serves with the pins in its
manifest (gateway/pins/lockfile.py's plan, diff and files); `write()` audits each
change as `tool.pinned` (with the operator as `actor`), then rewrites the
manifest's `pins:` block and the record beside it. A running gateway picks the
new pins up from the file (gateway/pins/definitions.py), as it does for the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mcp_types as types

from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.errors import ConfigError
from gateway.pins import definitions as pins
from gateway.pins import lockfile


@dataclass(frozen=True)
class PinPlan:
    """What pinning would change in one manifest, and the files' contents afterwards."""

    path: Path
    server: str
    owner: str | None
    entries: list[lockfile.Entry]
    after: dict[str, str] = field(default_factory=dict)  # the manifest's pins: block
    record: dict[str, lockfile.Definition] = field(default_factory=dict)  # <server>.pins.json


def plan(
    path: Path,
    server: str,
    owner: str | None,
    current: Mapping[str, str],
    tools: Mapping[str, types.Tool],
    tool: str | None = None,
) -> PinPlan:
    """Pin what `tools` (the served definitions) say, for every tool or only `tool`.

    Raises:
        ConfigError: `tool` is neither served nor pinned.
    """
    definitions = {name: pins.definition(t) for name, t in tools.items()}
    new = {name: pins.digest(d) for name, d in definitions.items()}
    names = set(current) | set(new)
    if tool is not None:
        if tool not in names:
            raise ConfigError(f"{server!r} serves no tool {tool!r} and has no pin for it")
        names = {tool}
    recorded = lockfile.read_record(path)
    entries = lockfile.plan(current, new, definitions, recorded, names)
    after = {name: p for name, p in current.items() if name not in names}
    after.update({name: new[name] for name in names if name in new})
    record = {name: d for name, d in recorded.items() if name in after and name not in names}
    record.update({name: definitions[name] for name in names if name in new})
    return PinPlan(path, server, owner, entries, after, record)


async def write(change: PinPlan, audit: Audit, actor: str) -> None:
    """Audit every entry (durably, before anything is written), then write the manifest's pins and the record.

    Raises:
        AuditUnavailable: the audit cannot be written (nothing is).
        ConfigError: a file cannot be written.
    """
    for entry in change.entries:
        await audit.emit(
            Event.TOOL_PINNED,
            durable=True,
            server=change.server,
            server_owner=change.owner,
            tool=entry.tool,
            old_pin=entry.old_pin,
            new_pin=entry.new_pin,
            actor=actor,
        )
    lockfile.write_pins(change.path, change.after)
    lockfile.write_record(change.path, change.record)
