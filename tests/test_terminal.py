"""Agent-chosen text never reaches the operator's terminal raw: tables and plain lines escape it, JSON is ASCII."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import unicodedata
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from gateway.logs import configure
from gateway.terminal import json_text, safe
from tests.identity.support import cli
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio

HOSTILE = "\x1b[31mred\n\u202eevil\x9b"
SHOWN = "\\x1b[31mred\\x0a\\u202eevil\\x9b"
UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs")


def raw_characters(output: str) -> list[str]:
    """Characters a terminal would act on rather than draw (the output's own line breaks aside)."""
    return [c for c in output if unicodedata.category(c) in UNSAFE and c != "\n"]


async def test_a_hostile_task_and_tool_name_are_shown_escaped_by_every_cli_printer_and_exact_in_json(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        token = (await cli(gw, "sessions", "open", "--agent", "alice-bot", "--task", HOSTILE)).strip()
        async with gw.client(token, mode="legacy") as client:
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(HOSTILE, {})

        printed = {
            "sessions list": await cli(gw, "sessions", "list"),
            "report by task": await cli(gw, "report", "--by", "task"),
            "audit tail": await cli(gw, "audit", "tail", "--event", "tool.call"),
        }
        for command, output in printed.items():
            assert raw_characters(output) == [], command
            assert SHOWN in output, command
            assert not any(line.startswith("evil") for line in output.splitlines()), f"{command}: a forged line"

        exact = {
            "sessions list --json": [s["task"] for s in json.loads(await cli(gw, "sessions", "list", "--json"))],
            "report --format json": [
                row["task"] for row in json.loads(await cli(gw, "report", "--by", "task", "--format", "json"))["rows"]
            ],
            "audit tail --json": [
                json.loads(line)["tool"]
                for line in (await cli(gw, "audit", "tail", "--event", "tool.call", "--json")).splitlines()
            ],
        }
        for command, values in exact.items():
            assert HOSTILE in values, command
        for argv in (
            ("sessions", "list", "--json"),
            ("report", "--by", "task", "--format", "json"),
            ("audit", "tail", "--json"),
        ):
            assert (await cli(gw, *argv)).isascii(), argv


_ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})")


def unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(next(g for g in m.groups() if g), 16)), text)


@given(st.text())
def test_safe_text_holds_no_control_format_or_separator_character_and_names_each_one_it_replaced(text: str) -> None:
    shown = safe(text)
    assert not [c for c in shown if unicodedata.category(c) in (*UNSAFE, "Zs") and c != " "]
    assert safe(shown) == shown
    if "\\" not in text:  # the escapes are the only backslashes: reading them back gives the text
        assert unescape(shown) == text
    if text.isprintable():
        assert shown == text


@given(
    st.recursive(
        st.text() | st.integers() | st.none(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    )
)
def test_json_for_a_terminal_is_ascii_and_reads_back_to_the_same_value(value: object) -> None:
    text = json_text(value)
    assert text.isascii() and not raw_characters(text)
    assert json.loads(text) == value


def test_console_logs_on_a_terminal_show_values_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure()
        structlog.get_logger("test").warning("upstream.failed", tool=HOSTILE)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    shown = terminal.getvalue()
    assert SHOWN in shown and "\u202e" not in shown and "\x9b" not in shown and "red\n" not in shown
