"""`mcp-gateway report` over the audit stream real traffic produced: totals equal the records' sums."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from gateway import cli
from gateway.audit.files import audit_files, rotated_path
from gateway.report.chargeback import build, read_records
from tests.support.cli import run_cli as cli_run
from tests.support.counter import counter_manifest
from tests.support.harness import Harness, everything_stdio_manifest, running_gateway

pytestmark = pytest.mark.anyio

AGENTS = {
    "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["counter.*"], "budget": {"session_calls": 3}}},
    "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["counter.echo"]}},
}
STOPS = {"session_calls", "session_tokens", "daily_tokens", "tool_calls", "loop_repeats", "calls_per_minute"}
METERED = {"tool.result", "resource.result", "prompt.result", "completion.result", "sampling.request"}


async def usage(gw: Harness, token: str, body: dict[str, Any]) -> None:
    async with gw.http() as http:
        response = await http.post("/v1/usage", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


async def run_cli(*argv: str) -> int:
    status, _ = await cli_run(*argv)
    return status


async def traffic(tmp_path: Path) -> Path:
    """Two agents, four sessions ending four ways, tool calls, a denial, a stop, model usage; returns gateway.yaml."""
    extra = {
        "prices": {"gpt-test": {"input_per_mtok": 3, "output_per_mtok": 15}},
        "shared_credentials": {"max_fingerprints": 1},
    }
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(tmp_path / "calls.log")], agents=AGENTS, extra=extra
    ) as gw:
        config = str(gw.root / "gateway.yaml")
        alice1 = await gw.open_session("alice-bot", task="quarterly report")
        async with gw.client(alice1) as client:
            await client.call_tool("counter__echo", {"text": "revenue"})
            await client.call_tool("counter__echo", {"text": "costs"})
            await client.call_tool("counter__words", {"count": 50})
            assert (await client.call_tool("counter__echo", {"text": "one too many"})).is_error  # stopped
        await usage(gw, alice1, {"model": "gpt-test", "input_tokens": 12000, "output_tokens": 800})
        assert await run_cli("sessions", "close", gw.gateway.tokens.verify(alice1).sid, "--config", config) == 0

        alice2 = await gw.open_session("alice-bot", task="triage", ttl=60)
        async with gw.client(alice2) as client:
            await client.call_tool("counter__words", {"count": 5})
        gw.clock.advance(120)
        await gw.gateway.sessions.sweep()

        bob1 = await gw.open_session("bob-bot", task="on call")
        async with gw.client(bob1) as client:
            await client.call_tool("counter__echo", {"text": "page"})
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("counter__words", {"count": 1})
        await usage(gw, bob1, {"model": "claude-test", "input_tokens": 500, "output_tokens": 100, "cost_usd": 0.25})
        await gw.gateway.sessions.end(gw.gateway.tokens.verify(bob1).sid, "revoked", "revoked")

        bob2 = await gw.open_session("bob-bot", task="on call")
        async with gw.client(bob2) as client:
            await client.call_tool("counter__echo", {"text": "still here"})
        # bob-bot's credential turns up in a second client: the gateway flags it as shared.
        async with gw.client(bob2, client_info=types.Implementation(name="another-ide", version="1")) as client:
            await client.list_tools()
        assert [r["agent"] for r in gw.audit("credential.shared_suspected")] == ["bob-bot"]
    # Rotate the gateway's file, as the sink does past rotate_bytes: the report must still see every record.
    audit = tmp_path / "state" / "audit.jsonl"
    audit.rename(rotated_path(audit, json.loads(audit.read_text().splitlines()[-1])["seq"]))
    return tmp_path / "gateway.yaml"


def expected(records: list[dict[str, Any]], keep: Any = lambda r: True) -> dict[str, float]:
    """The totals, summed straight from the records (independently of gateway.report)."""
    mine = [r for r in records if keep(r)]
    gated = [r for r in mine if r["event"] in ("tool.call", "resource.read", "prompt.get", "completion.complete")]
    metered = [r for r in mine if r["event"] in METERED]
    models = [r for r in mine if r["event"] == "model.usage"]
    return {
        "calls": sum(1 for r in gated if r["event"] == "tool.call" and r["decision"] == "allow"),
        "denials": sum(1 for r in gated if r["decision"] == "deny" and r["reason"] not in STOPS),
        "stops": sum(1 for r in gated if r["decision"] == "deny" and r["reason"] in STOPS),
        "request_tokens": sum(r.get("request_tokens", 0) for r in metered),
        "response_tokens": sum(r.get("response_tokens", 0) for r in metered),
        "model_input_tokens": sum(r["input_tokens"] for r in models),
        "model_output_tokens": sum(r["output_tokens"] for r in models),
        "cost_usd": pytest.approx(sum(r.get("cost_usd", 0) for r in models)),
    }


async def test_report_totals_and_rows_equal_the_sums_over_the_audit_records_in_every_format(tmp_path):
    config = await traffic(tmp_path)
    audit = tmp_path / "state" / "audit.jsonl"
    files = audit_files(audit)
    last_seq = json.loads(files[0].read_text().splitlines()[-1])["seq"]
    assert files == [rotated_path(audit, last_seq), audit.with_name("audit-cli.jsonl")]
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]

    outputs = {fmt: tmp_path / f"report.{fmt}" for fmt in ("table", "csv", "json", "html")}
    for fmt, path in outputs.items():
        assert (
            await run_cli("report", "--by", "agent", "--format", fmt, "--output", str(path), "--config", str(config))
            == 0
        )

    data = json.loads(outputs["json"].read_text())
    totals = expected(records)
    assert data["totals"] == totals
    assert totals["calls"] == 6 and totals["stops"] == 1 and totals["denials"] == 1
    assert totals["response_tokens"] > 0 and totals["cost_usd"] == pytest.approx(0.25 + (12000 * 3 + 800 * 15) / 1e6)
    rows = {row["agent"]: row for row in data["rows"]}
    assert set(rows) == {"alice-bot", "bob-bot"}
    for name, row in rows.items():
        own = expected(records, lambda r, n=name: r.get("agent") == n)
        assert {k: v for k, v in row.items() if k != "agent"} == own

    evidence = data["evidence"]
    assert evidence["actions"] == 8  # six forwarded calls, two usage reports
    assert evidence["tied_to_grant_share"] == 1.0
    assert evidence["tied_to_unique_identity_share"] == 5 / 8  # bob-bot's three actions are flagged as shared
    assert evidence["by_session_outcome"] == {"closed": 4, "expired": 1, "revoked": 2, "open": 1}
    assert evidence["closed_cleanly_share"] == 0.5
    assert evidence["sessions"] == {"closed": 1, "expired": 1, "revoked": 1, "open": 1}
    assert evidence["shared_credential_flags"] == 1 and evidence["flagged_agents"] == ["bob-bot"]

    with outputs["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["agent"] for r in table] == [row["agent"] for row in data["rows"]] + ["TOTAL"]
    assert int(table[-1]["calls"]) == totals["calls"] and float(table[-1]["cost_usd"]) == totals["cost_usd"]

    text = outputs["table"].read_text()
    assert re.search(rf"^TOTAL\s+{totals['calls']}\s+1\s+1\s", text, re.M), text
    assert "tied to a unique agent identity  62.5%" in text and "shared-credential flags          1 (bob-bot)" in text

    html = outputs["html"].read_text()
    page = _Page()
    page.feed(html)
    embedded = json.loads(page.data)
    assert embedded["totals"] == data["totals"]
    spend = embedded["charts"]["spend_by_agent"]
    assert set(spend["series"]) == {"alice-bot", "bob-bot"}
    assert sum(sum(s["tokens"]) for s in spend["series"].values()) == sum(
        totals[k] for k in ("request_tokens", "response_tokens", "model_input_tokens", "model_output_tokens")
    )
    assert embedded["charts"]["top_tools_by_response_tokens"][0][0] == "counter.words"
    assert embedded["charts"]["session_outcomes"] == evidence["sessions"]
    assert page.svgs == 3 and page.external == [] and page.scripts == ["application/json"]


def test_a_neighbouring_stream_beside_the_audit_file_is_not_read(tmp_path, capsys):
    """Replicas may share a directory: `audit-gw-b.jsonl` is another gateway's stream, not a rotation of this one."""
    audit = tmp_path / "audit.jsonl"
    mine = [rotated_path(audit, 7), audit, audit.with_name("audit-cli.jsonl")]
    for path in [*mine, audit.with_name("audit-other.jsonl"), audit.with_name("audit-gw-b.jsonl")]:
        path.write_text(json.dumps({"ts": 1.0, "event": "gateway.started", "gateway": path.stem}) + "\n")
    assert audit_files(audit) == mine
    records, skipped = read_records(audit_files(audit))
    assert sorted(r["gateway"] for r in records) == sorted(p.stem for p in mine) and skipped == 0
    assert cli.main(["report", str(audit), "--format", "json", "--config", str(tmp_path / "gateway.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == sorted(map(str, mine))


async def test_every_grouping_partitions_the_same_totals(tmp_path):
    await traffic(tmp_path)
    records, skipped = read_records(audit_files(tmp_path / "state" / "audit.jsonl"))
    assert skipped == 0
    whole = build(records, "agent").totals
    for by in ("owner", "session", "task", "tool", "server"):
        report = build(records, by)
        assert report.totals == whole
        for metric in whole:
            assert sum(row[metric] for row in report.rows.values()) == pytest.approx(whole[metric])
    tools = build(records, "tool").rows
    assert {"counter.echo", "counter.words", "(model) gpt-test", "(model) claude-test"} <= set(tools)


async def test_since_and_until_select_the_records_in_the_period(tmp_path):
    await traffic(tmp_path)
    records, _ = read_records(audit_files(tmp_path / "state" / "audit.jsonl"))
    middle = next(r["ts"] for r in records if r["event"] == "session.opened" and r["task"] == "on call")
    early, late = build(records, "agent", until=middle), build(records, "agent", since=middle)
    assert early.totals == expected(records, lambda r: r["ts"] < middle)
    assert late.totals == expected(records, lambda r: r["ts"] >= middle)
    assert set(early.rows) == {"alice-bot"} and early.totals["calls"] + late.totals["calls"] == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--by", "team"], "argument --by: invalid choice: 'team'"),
        (["--since", "last tuesday"], "argument --since: 'last tuesday' is not an ISO 8601 date or time"),
        (["--until", "2026-13-45"], "argument --until: '2026-13-45' is not an ISO 8601"),
        (["--format", "pdf"], "argument --format: invalid choice: 'pdf'"),
    ],
)
def test_bad_report_arguments_exit_with_a_one_line_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(["report", *argv, "--config", str(tmp_path / "gateway.yaml")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_period_that_ends_before_it_starts_is_refused(tmp_path, capsys):
    code = cli.main(["report", "--since", "2026-02-01", "--until", "2026-01-01", "--config", "x.yaml"])
    assert code == 1 and "--since must be before --until" in capsys.readouterr().err


class _Page(HTMLParser):
    """Finds the embedded report data, counts charts, and lists anything that would be fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.data = ""
        self.svgs = 0
        self.external: list[str] = []
        self.scripts: list[str | None] = []
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.svgs += tag == "svg"
        if tag == "script":
            self.scripts.append(values.get("type"))
            self._in_data = values.get("id") == "report-data"
        for name in ("src", "href"):
            if values.get(name):
                self.external.append(str(values[name]))

    def handle_endtag(self, tag: str) -> None:
        self._in_data = self._in_data and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data += data


async def test_reads_prompts_and_completions_count_their_tokens_once_from_their_outcome_records(tmp_path):
    agents = {
        "reader-bot": {
            "owner": "r@example.com",
            "grant": {"tools": [], "resources": ["everything"], "prompts": ["everything"]},
        }
    }
    async with running_gateway(tmp_path, manifests=[everything_stdio_manifest()], agents=agents) as gw:
        token = await gw.open_session("reader-bot")
        async with gw.client(token) as client:
            await client.read_resource("everything+demo://resource/static/document/architecture.md")
            await client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
            completable = types.PromptReference(type="ref/prompt", name="everything__completable-prompt")
            await client.session.complete(completable, {"name": "department", "value": "Eng"})
        session = (await gw.gateway.store.list_sessions("reader-bot"))[0]
        records = gw.audit()
    report = build(records, "tool")
    rows = report.rows
    assert set(rows) == {"everything.(resources)", "everything.(prompts)", "everything.(completions)"}
    assert report.totals["request_tokens"] + report.totals["response_tokens"] == session.tokens > 0
    assert all(row["response_tokens"] > 0 for row in rows.values())
    assert report.evidence["actions"] == 3  # one read, one prompt, one completion


def test_a_single_record_read_of_an_earlier_version_still_counts_its_tokens():
    """Before outcome records, a read was one `resource.read` with `outcome`, written after the answer."""
    base = {"ts": 1.0, "agent": "a", "server": "everything", "decision": "allow"}
    records = [
        {**base, "event": "resource.read", "outcome": "ok", "response_tokens": 40},
        {**base, "event": "prompt.get", "call_id": "c1", "request_tokens": 3},
        {**base, "event": "prompt.result", "call_id": "c1", "outcome": "ok", "request_tokens": 3, "response_tokens": 9},
    ]
    totals = build(records, "agent").totals
    assert (totals["request_tokens"], totals["response_tokens"]) == (3, 49)


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_report_over_extreme_records_is_valid_json_and_leaves_out_amounts_no_gateway_accepts(tmp_path, capsys):
    """Largest valid amounts add up exactly; what an older gateway let through (1.7e308 twice overflows to inf,
    an Infinity literal, a negative count) is left out and counted, never printed as Infinity or NaN."""
    audit = tmp_path / "audit.jsonl"
    usage = {"event": "model.usage", "agent": "bot", "session": "s", "model": "m"}
    valid = [{**usage, "ts": 1.0 + i, "input_tokens": 10**9, "output_tokens": 10**9, "cost_usd": 1e6} for i in range(3)]
    old = [
        {**usage, "ts": 10.0, "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.7e308},
        {**usage, "ts": 11.0, "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.7e308},
        {**usage, "ts": 12.0, "input_tokens": -5, "output_tokens": 1, "cost_usd": float("inf")},
    ]
    audit.write_text("".join(json.dumps(r) + "\n" for r in valid + old))  # json.dumps writes inf as Infinity
    for fmt in ("json", "html"):
        assert cli.main(["report", str(audit), "--format", fmt, "--config", str(tmp_path / "gateway.yaml")]) == 0
        captured = capsys.readouterr()
        if fmt == "html":
            page = _Page()
            page.feed(captured.out)
            data = _strict_json(page.data)
        else:
            data = _strict_json(captured.out)
        assert data["totals"]["cost_usd"] == 3e6
        assert data["totals"]["model_input_tokens"] == 3 * 10**9 + 2
        assert data["totals"]["model_output_tokens"] == 3 * 10**9 + 3
        assert data["invalid_values"] == 4
        assert "left out 4 amount(s)" in captured.err
