"""`mcp-gateway report --recertify`: the access-review evidence per agent, from the store and real traffic."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.files import glob_matches
from gateway.report.recertify import render_recertification, unused_granted
from tests.identity.support import call_time, client_credentials, give_secret
from tests.support.cli import run_cli
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio

AGENTS = {
    # Granted both of the server's tools, calls one of them.
    "wide-bot": {"owner": "wide@example.com", "grant": {"tools": ["time.*"]}, "credential_max_age": "90d"},
    # Granted exactly what it calls.
    "tight-bot": {"owner": "tight@example.com", "grant": {"tools": ["time.get_current_time"]}, "expires": "2099-01-01"},
    # Granted a server nobody runs or called, never used at all.
    "idle-bot": {"owner": "idle@example.com", "grant": {"tools": ["git.*"]}},
}


async def traffic(tmp_path: Path) -> str:
    """Three agents' known use through the real gateway; returns gateway.yaml's path."""
    manifest = time_manifest(tools=["get_current_time", "convert_time"])
    async with running_gateway(tmp_path, manifests=[manifest], agents=AGENTS) as gw:
        for agent, calls in (("wide-bot", 2), ("tight-bot", 1)):
            secret = await give_secret(gw, agent)
            access = (await client_credentials(gw, agent, secret))["access_token"]
            for _ in range(calls):
                assert not (await call_time(gw, access)).is_error
        return str(gw.root / "gateway.yaml")


async def test_the_recertification_report_shows_each_agents_credential_use_and_the_granted_tools_it_never_used(
    tmp_path,
):
    config = await traffic(tmp_path)
    status, out = await run_cli("report", "--recertify", "--since", "1d", "--format", "json", "--config", config)
    assert status == 0
    data = json.loads(out)
    rows = {row["agent"]: row for row in data["agents"]}
    assert set(rows) == set(AGENTS)

    wide, tight, idle = rows["wide-bot"], rows["tight-bot"], rows["idle-bot"]
    assert wide["owner"] == "wide@example.com" and wide["source"] == "config"
    assert wide["credential"] == "secret" and wide["credential_age_days"] is not None
    assert wide["credential_age_days"] < 1 and wide["credential_max_age_days"] == 90.0
    assert wide["used_tools"] == ["time.get_current_time"]
    assert wide["unused_granted_tools"] == ["time.convert_time"]  # expanded against the manifest's tools
    assert wide["calls"] == 2 and wide["sessions"] == 1 and wide["tokens"] > 0
    assert wide["last_used"] is not None
    assert "1 granted tool(s) unused: narrow the grant" in wide["findings"]

    assert tight["unused_granted_tools"] == [] and tight["calls"] == 1 and tight["sessions"] == 1
    assert tight["expires"] == "2099-01-01T00:00:00Z" and "no expiry" not in tight["findings"]

    assert idle["credential"] == "none" and idle["last_used"] is None and idle["calls"] == 0
    assert idle["unused_granted_tools"] == ["git.*"]  # no tool of it known: the pattern itself
    assert "not used in the window" in idle["findings"]

    status, table = await run_cli("report", "--recertify", "--config", config)
    assert status == 0
    lines = table.splitlines()
    assert lines[0].startswith("Access review from ")
    header = next(line for line in lines if line.startswith("AGENT"))
    assert "UNUSED GRANTED TOOLS" in header and "CREDENTIAL AGE DAYS" in header
    wide_line = next(line for line in lines if line.startswith("wide-bot"))
    assert "wide@example.com" in wide_line and "time.convert_time" in wide_line and "secret" in wide_line

    status, text = await run_cli("report", "--recertify", "--format", "csv", "--config", config)
    assert status == 0
    by_agent = {row["agent"]: row for row in csv.DictReader(io.StringIO(text))}
    assert by_agent["wide-bot"]["unused_granted_tools"] == "time.convert_time"

    status, html = await run_cli("report", "--recertify", "--format", "html", "--config", config)
    assert status == 0 and "<h1>Agent access review</h1>" in html and "time.convert_time" in html


async def test_recertify_refuses_the_focus_format_with_one_line(tmp_path, capsys):
    config = await traffic(tmp_path)
    status, _ = await run_cli("report", "--recertify", "--format", "focus", "--config", config)
    assert status != 0
    assert "--recertify: --format must be one of table, csv, json, html" in capsys.readouterr().err


def test_the_recertification_table_escapes_what_agents_and_servers_chose():
    row = {
        "agent": "a-bot",
        "owner": "o@example.com",
        "source": "store",
        "disabled": False,
        "credential": "secret",
        "credential_age_days": 1.0,
        "expires": None,
        "last_used": None,
        "sessions": 0,
        "calls": 0,
        "tokens": 0,
        "cost_usd": 0.0,
        "unused_granted_tools": ["evil.\x1b[2Jwipe\u202e"],
        "findings": [],
    }
    table = render_recertification({"since": "s", "until": "u", "agents": [row]}, "table")
    assert "\x1b" not in table and "\u202e" not in table
    assert "evil.\\x1b[2Jwipe\\u202e" in table


NAMES = st.sampled_from(["time", "git", "get_current_time", "convert_time", "log", "status"])
PAIRS = st.tuples(st.sampled_from(["time", "git"]), NAMES)
PATTERNS = st.tuples(st.sampled_from(["time", "git", "*", "t*"]), st.one_of(NAMES, st.sampled_from(["*", "get_*"])))


@given(patterns=st.lists(PATTERNS, max_size=4), used=st.sets(PAIRS, max_size=4), known=st.sets(PAIRS, max_size=6))
def test_every_granted_known_tool_is_either_used_or_listed_unused_and_nothing_used_is_listed(patterns, used, known):
    used = {pair for pair in used if any(glob_matches(s, pair[0]) and glob_matches(t, pair[1]) for s, t in patterns)}
    listed = set(unused_granted(patterns, used, known | used))
    for server, tool in known | used:
        granted = any(glob_matches(s, server) and glob_matches(t, tool) for s, t in patterns)
        if granted:
            assert ((server, tool) in used) != (f"{server}.{tool}" in listed)
        else:
            assert f"{server}.{tool}" not in listed
    pattern_names = {f"{s}.{t}" for s, t in patterns}
    assert all(name in pattern_names or tuple(name.split(".", 1)) in known for name in listed)
