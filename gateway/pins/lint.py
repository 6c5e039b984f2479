"""What tool poisoning looks like, found in a live tool definition (OWASP MCP Top 10, MCP03).

A poisoned tool carries instructions for the model in text the model reads but
a reviewer skims: its description, its schemas' descriptions, titles, defaults.
`lint` reads every string of the pinned parts of a definition (gateway/pins/definitions.py)
and returns one reason per finding:

- invisible or bidirectional Unicode (format characters such as zero-width
  spaces, bidi overrides and tag characters; control characters; lone
  surrogates; private-use characters; invisible fillers),
- instructions addressed to the model ("ignore previous instructions", "do not
  tell the user", "before using this tool, read ~/.ssh/..."),
- <IMPORTANT>-style tags and [SYSTEM]-style markers,
- descriptions far longer than usual (over LONG_DESCRIPTION characters),
- other tools' names, which is how one server shadows another's tools.

These are heuristics: findings are warnings for a human to review.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterator
from typing import Any

import mcp_types as types

from gateway.mcp.names import SEPARATOR
from gateway.pins.definitions import definition

LONG_DESCRIPTION = 1024  # characters; tool descriptions in common servers stay well under this

_INVISIBLE_CATEGORIES = {"Cf", "Cs", "Co"}  # format (zero-width, bidi, tags), lone surrogates, private use
_INVISIBLE_EXTRA = {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800}  # fillers that render as nothing
_ALLOWED_CONTROLS = {"\n", "\r", "\t"}

_INSTRUCTIONS = [
    (re.compile(p, re.IGNORECASE), reason)
    for p, reason in (
        (
            r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}?\b(previous|prior|above|earlier|preceding|all|any|"
            r"other|system|your)\b[^.\n]{0,40}?\b(instructions?|prompts?|rules|guidelines|directions|messages|context)\b",
            "an instruction to the model to ignore its instructions",
        ),
        (
            r"\b(do not|don't|never|without)\b[^.\n]{0,30}?\b(tell|telling|inform|informing|mention|mentioning|"
            r"reveal|revealing|show|showing|notify|notifying|alert|alerting|disclose|disclosing)\b[^.\n]{0,30}?"
            r"\b(user|human|operator)s?\b",
            "an instruction to the model to keep something from the user",
        ),
        (
            r"\b(hide|conceal|keep)\b[^.\n]{0,30}?\bfrom\b[^.\n]{0,10}?\b(user|human|operator)s?\b",
            "an instruction to the model to keep something from the user",
        ),
        (
            r"\b(system prompt|your instructions|you are now|as an ai\b|the assistant must|the model must)",
            "text addressed to the model",
        ),
        (
            r"(~/\.ssh|\bid_rsa\b|\bid_ed25519\b|\.aws/credentials|/etc/passwd|/etc/shadow|\bmcp\.json\b|"
            r"\.cursor/|\.env\b|private key)",
            "a sensitive file or secret mentioned",
        ),
    )
]
_TAG = re.compile(
    r"<\s*/?\s*(important|system|instructions?|secret|hidden|critical|admin|assistant|context|prompt|sys)\b[^>]{0,40}>"
    r"|\[\s*/?\s*(system|inst|important|admin)\s*\]|<<\s*/?\s*sys\s*>>",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IDENTIFIER_LIKE = re.compile(r"[_.-]|[a-z][A-Z]")


def invisible(char: str) -> bool:
    """Whether a character renders as nothing (or reorders text) where a reviewer would read it."""
    code, category = ord(char), unicodedata.category(char)
    if category in _INVISIBLE_CATEGORIES or code in _INVISIBLE_EXTRA:
        return True
    if 0xE0100 <= code <= 0xE01EF:  # variation selectors 17-256: a channel for smuggled bytes
        return True
    return category == "Cc" and char not in _ALLOWED_CONTROLS


def visible(text: str) -> str:
    """The text with every invisible character spelled out as <U+XXXX>, for showing to a reviewer."""
    return "".join(f"<U+{ord(c):04X}>" if invisible(c) else c for c in text)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a definition with where it sits: values, and the keys of objects."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key} (key)", str(key)
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def lint(tool: types.Tool, other_tools: Collection[str] = ()) -> list[str]:
    """Why this definition looks poisoned; empty when nothing does."""
    reasons: list[str] = []
    others = {name for name in other_tools if name != tool.name and _IDENTIFIER_LIKE.search(name)}
    for where, text in _fields(tool):
        found = [c for c in text if invisible(c)]
        if found:
            names = ", ".join(sorted({f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in found}))
            reasons.append(f"invisible or bidirectional Unicode in {where}: {names}")
        if where.endswith(" (key)"):
            continue
        for pattern, reason in _INSTRUCTIONS:
            if match := pattern.search(text):
                reasons.append(f"{reason} in {where}: {match.group(0)!r}")
        if match := _TAG.search(text):
            reasons.append(f"an <IMPORTANT>-style tag in {where}: {match.group(0)!r}")
        if where.endswith("description") and len(text) > LONG_DESCRIPTION:
            reasons.append(f"{where} is {len(text)} characters long (usual: under {LONG_DESCRIPTION})")
        mentioned = sorted({n for token in _TOKEN.findall(text) if (n := _tool_named(token, others)) is not None})
        if mentioned:
            reasons.append(f"{where} mentions other tools: {', '.join(mentioned)}")
    return list(dict.fromkeys(reasons))


def _fields(tool: types.Tool) -> Iterator[tuple[str, str]]:
    for key, value in definition(tool).items():
        yield from _strings(value, key)


def _tool_named(token: str, others: set[str]) -> str | None:
    token = token.rstrip(".-")
    if token in others:
        return token
    _, sep, rest = token.partition(SEPARATOR)  # the aggregate endpoint's <server>__<tool>
    return rest if sep and rest in others else None
