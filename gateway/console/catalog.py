"""The Tools page's facts: each server's tools with their pin status, and a side-by-side diff of a changed one."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.pins import definitions as pins
from gateway.pins import lockfile

if TYPE_CHECKING:
    from gateway.console.deps import ConsoleDeps
    from gateway.upstream import Upstream

Status = Literal["pinned", "quarantined", "unpinned", "waiting"]  # waiting: unpinned, hidden by require_pins


@dataclass(frozen=True)
class DiffRow:
    tag: Literal["equal", "replace", "delete", "insert"]
    pinned: str | None
    served: str | None


@dataclass(frozen=True)
class ToolRow:
    name: str
    status: Status
    pinned: str | None  # the pin in force
    served: str  # the pin of the definition served now
    diff: list[DiffRow] = field(default_factory=list)  # quarantined: pinned (left) vs served (right)
    recorded: bool = True  # whether the pinned definition was recorded (else only the served one is shown)


@dataclass(frozen=True)
class ServerRow:
    name: str
    owner: str | None
    up: bool
    tools: list[ToolRow]


def side_by_side(pinned: list[str], served: list[str]) -> list[DiffRow]:
    """The two definitions' lines aligned, each pair tagged as difflib's opcodes tag it."""
    rows: list[DiffRow] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=pinned, b=served, autojunk=False).get_opcodes():
        left, right = pinned[i1:i2], served[j1:j2]
        for n in range(max(len(left), len(right))):
            rows.append(DiffRow(tag, left[n] if n < len(left) else None, right[n] if n < len(right) else None))
    return rows


def tool_rows(deps: ConsoleDeps, upstream: Upstream) -> list[ToolRow]:
    in_force = deps.pins.pins.get(upstream.name, {})
    recorded = lockfile.read_record(upstream.spec.source) if upstream.spec.source is not None else {}
    rows = []
    for name, tool in sorted(upstream.catalog.tools.items()):
        definition = pins.definition(tool)
        served = pins.digest(definition)
        pinned = in_force.get(name)
        if pinned is None:
            status: Status = "waiting" if name in upstream.hidden else "unpinned"
            rows.append(ToolRow(name, status, None, served))
        elif pinned == served:
            rows.append(ToolRow(name, "pinned", pinned, served))
        else:
            before = recorded.get(name)
            known = isinstance(before, dict) and pins.digest(before) == pinned
            old = lockfile.render_definition(before) if known else []  # type: ignore[arg-type]
            rows.append(
                ToolRow(
                    name,
                    "quarantined",
                    pinned,
                    served,
                    side_by_side(old, lockfile.render_definition(definition)),
                    recorded=known,
                )
            )
    return rows


def servers(deps: ConsoleDeps) -> list[ServerRow]:
    return [
        ServerRow(name, upstream.spec.owner, upstream.up, tool_rows(deps, upstream))
        for name, upstream in sorted(deps.upstreams.servers.items())
    ]
