"""The pinning workflow's files: a manifest's `pins:` block, the record of what was pinned, and the diff.

Like a package lock: `manifests pin` compares the definitions a server serves
with the pins in its manifest, shows what changed, and on confirmation rewrites
only the `pins:` block of the manifest (every other line, comments included,
stays as it was). Beside the manifest, `<server>.pins.json` records each pinned
definition, so the next pin can show a readable diff of descriptions and
schemas and a reviewer can read exactly what was approved.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.pins.definitions import digest
from gateway.pins.lint import visible

_PINS_KEY = re.compile(r"^pins\s*:\s*(#.*)?$")  # a top-level block-style `pins:` line
_PINS_LINE = re.compile(r"^pins\s*:")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")

Definition = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One tool's line in the plan: new, changed or removed (old or new pin None)."""

    tool: str
    old_pin: str | None
    new_pin: str | None
    pinned: Definition | None  # as recorded at the last pin, when known
    served: Definition | None

    @property
    def kind(self) -> str:
        return "new" if self.old_pin is None else "removed" if self.new_pin is None else "changed"


def plan(
    old: Mapping[str, str],
    new: Mapping[str, str],
    served: Mapping[str, Definition],
    recorded: Mapping[str, Definition],
    tools: set[str],
) -> list[Entry]:
    """What pinning `tools` would change, tool by tool."""
    return [
        Entry(name, old.get(name), new.get(name), _recorded(recorded, name, old.get(name)), served.get(name))
        for name in sorted(tools)
        if old.get(name) != new.get(name)
    ]


def _recorded(recorded: Mapping[str, Definition], name: str, pin: str | None) -> Definition | None:
    """The recorded definition of a tool, if it is the one its pin was made from."""
    definition = recorded.get(name)
    if pin is None or not isinstance(definition, dict) or digest(definition) != pin:
        return None
    return definition


def render_definition(d: Definition) -> list[str]:
    """A definition as readable lines (what a diff compares): title, description, then the schemas."""
    lines = [f"title: {visible(d['title'])}"] if d.get("title") else []
    lines.append("description:")
    lines += [f"  {visible(line)}" for line in (d.get("description") or "").split("\n")]  # splitlines eats U+2028
    for key in ("inputSchema", "outputSchema", "annotations"):
        if d.get(key) is not None:
            lines.append(f"{key}:")
            lines += [f"  {line}" for line in json.dumps(d[key], indent=2, sort_keys=True).splitlines()]
    return lines


def describe(entry: Entry) -> list[str]:
    """Readable lines for one entry: a definition, or a unified diff of the pinned and served ones."""
    head = {
        "new": f"+ new      {entry.tool}  {entry.new_pin}",
        "removed": f"- removed  {entry.tool}  {entry.old_pin} (no longer served)",
        "changed": f"~ changed  {entry.tool}  {entry.old_pin} -> {entry.new_pin}",
    }[entry.kind]
    body: list[str] = []
    if entry.kind == "new" and entry.served is not None:
        body = render_definition(entry.served)
    elif entry.kind == "changed" and entry.served is not None:
        if entry.pinned is None:
            body = [
                "(the pinned definition was not recorded; the served one follows)",
                *render_definition(entry.served),
            ]
        else:
            body = list(
                difflib.unified_diff(
                    render_definition(entry.pinned), render_definition(entry.served), "pinned", "served", lineterm=""
                )
            )
    return [head, *(f"    {line}" for line in body)]


# ---------------------------------------------------------------- files


def record_path(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}.pins.json")


def read_record(manifest: Path) -> dict[str, Definition]:
    """The definitions recorded at the last pin; empty when there is no (readable) record."""
    try:
        record = json.loads(record_path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(manifest: Path, record: Mapping[str, Definition]) -> None:
    text = json.dumps(dict(record), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    _replace(record_path(manifest), text)


def replace_pins(text: str, pins: Mapping[str, str]) -> str:
    """The manifest text with its top-level `pins:` block replaced (or appended); nothing else changes."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _PINS_LINE.match(line)), None)
    comment = ""
    if start is None:
        start = end = len(lines)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
    else:
        if match := _PINS_KEY.match(lines[start].rstrip("\r\n")):
            comment = f"  {match.group(1)}" if match.group(1) else ""
        end = start + 1
        while end < len(lines) and (lines[end][:1] in (" ", "\t") or not lines[end].strip()):
            end += 1
        while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay
            end -= 1
    if pins:
        block = [f"pins:{comment}\n"] + [f'  {_key(name)}: "{pin}"\n' for name, pin in sorted(pins.items())]
    else:
        block = [f"pins: {{}}{comment}\n"]
    return "".join(lines[:start] + block + lines[end:])


def _key(name: str) -> str:
    plain = _PLAIN_KEY.match(name) and yaml.safe_load(name) == name  # not a number, bool or null to YAML
    return name if plain else json.dumps(name, ensure_ascii=False)


def write_pins(manifest: Path, pins: Mapping[str, str]) -> None:
    """Rewrite the manifest's `pins:` block, after checking the result means what it should.

    Raises:
        ConfigError: the file cannot be read, or rewritten without changing anything else.
    """
    try:
        text = manifest.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{manifest}: cannot read: {exc.strerror or exc}") from None
    rewritten = replace_pins(text, pins)
    try:
        before, after = yaml.safe_load(text), yaml.safe_load(rewritten)
    except yaml.YAMLError:
        before = after = None
    if not isinstance(before, dict) or after != {**before, "pins": dict(pins)}:
        raise ConfigError(f"{manifest}: cannot rewrite its pins: block safely; write them by hand")
    _replace(manifest, rewritten)


def _replace(path: Path, text: str) -> None:
    """Write a file atomically, keeping its permissions.

    Raises:
        ConfigError: it cannot be written.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
