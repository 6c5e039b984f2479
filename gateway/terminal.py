"""Text from agents and tool servers made safe for an operator's terminal.

Task names, tool names, client info and upstream error texts are chosen by
agents or tool servers. Printed raw, an escape sequence can repaint or clear
the screen, a newline or carriage return can forge a table row or an audit
line, and a bidi override (U+202E) can make `evil` read as `live`. Every
table and plain-text printer passes such strings through `safe`; `--json`
output goes through `json_text`, which is exact JSON in plain ASCII.
"""

from __future__ import annotations

import json
from typing import Any


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: str) -> str:
    """`text` with every character a terminal would not simply draw spelled out as `\\x1b`, `\\u202e`, ...

    Escaped: whatever `str.isprintable` rejects, i.e. C0 and C1 controls, DEL, format characters
    (bidi overrides and isolates U+202A-U+202E and U+2066-U+2069, U+200E/U+200F, zero-width and tag
    characters), line and paragraph separators, spaces other than U+0020, surrogates, private-use and
    unassigned code points. Everything else is kept as it is, so `safe` is idempotent and composes with
    `repr` or JSON escaping done before it. A backslash is not escaped: text that already held `\\x1b`
    shows the same as an escaped ESC, harmlessly; `--json` shows the exact value.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def json_text(value: Any, **options: Any) -> str:
    """JSON for a terminal: exact, and ASCII only (`ensure_ascii`), so no control, bidi or separator
    character is ever printed raw; a reader parsing it gets the very same values."""
    return json.dumps(value, ensure_ascii=True, **options)
