"""`mcp-gateway report --format focus`: FOCUS 1.2 CSV whose rows add up to the chargeback report, exactly."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.audit.files import audit_files
from gateway.config.files import load_gateway_config
from gateway.report.chargeback import build
from gateway.report.focus import COLUMNS, render_focus
from tests.report.test_report import traffic

pytestmark = pytest.mark.anyio

# FOCUS 1.2's mandatory columns (specification/columns/*.md at tag v1.2 of FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec,
# "Feature level: Mandatory"), and the conditional ones that apply to metered usage with sub accounts and tags.
MANDATORY = {
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
}
CONDITIONAL = {
    "ConsumedQuantity",
    "ConsumedUnit",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "ResourceId",
    "ResourceName",
    "ResourceType",
}
SPEC_COLUMNS = MANDATORY | CONDITIONAL | {"ChargeFrequency", "ServiceSubcategory"}
NOT_NULL = {
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
}
MOMENT = "%Y-%m-%dT%H:%M:%SZ"


async def run(*argv: str, capture: Any) -> str:
    capture.readouterr()  # what earlier commands printed
    assert await anyio.to_thread.run_sync(cli.main, list(argv)) == 0
    return str(capture.readouterr().out)


def parse(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    return header, [dict(zip(header, line, strict=True)) for line in reader]


def conforms(row: dict[str, str]) -> None:
    """The FOCUS 1.2 rules each row must meet: nulls, formats, allowed values, costs in agreement."""
    assert all(row[c] != "" for c in NOT_NULL), row
    for column in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
        datetime.strptime(row[column], MOMENT)
    start, end = (datetime.strptime(row[c], MOMENT) for c in ("ChargePeriodStart", "ChargePeriodEnd"))
    assert (end - start).days == 1 and start.hour == start.minute == 0
    billing = [datetime.strptime(row[c], MOMENT) for c in ("BillingPeriodStart", "BillingPeriodEnd")]
    assert billing[0] <= start < end <= billing[1] and billing[0].day == billing[1].day == 1
    assert (row["ChargeCategory"], row["ChargeClass"], row["BillingCurrency"]) == ("Usage", "", "USD")
    assert row["ServiceCategory"] == "AI and Machine Learning" and row["ConsumedUnit"] == row["PricingUnit"] == "Tokens"
    assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
    assert Decimal(row["BilledCost"]) >= 0 and int(row["ConsumedQuantity"]) == int(row["PricingQuantity"]) >= 0
    tags = json.loads(row["Tags"])
    assert isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())


async def test_focus_rows_add_up_to_the_chargeback_report_with_exact_costs_and_quantities(tmp_path, capsys):
    config = str(await traffic(tmp_path))
    header, rows = parse(await run("report", "--format", "focus", "--config", config, capture=capsys))
    totals = json.loads(await run("report", "--format", "json", "--by", "tool", "--config", config, capture=capsys))[
        "totals"
    ]
    assert header == list(COLUMNS) and SPEC_COLUMNS <= set(header)
    assert all(c in SPEC_COLUMNS or c.startswith("x_") for c in header)  # custom columns carry the x_ prefix
    for row in rows:
        conforms(row)
        assert row["BillingAccountId"] == row["BillingAccountName"] == load_gateway_config(Path(config)).public_url

    tokens = sum(int(r["ConsumedQuantity"]) for r in rows)
    assert (
        tokens
        == totals["request_tokens"]
        + totals["response_tokens"]
        + totals["model_input_tokens"]
        + totals["model_output_tokens"]
    )
    assert sum(int(r["x_Calls"]) for r in rows) == totals["calls"]
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal("0.298") == Decimal(str(totals["cost_usd"]))
    models = {(json.loads(r["Tags"])["agent"], r["ResourceId"]): r for r in rows if r["ResourceType"] == "Model"}
    assert models[("alice-bot", "gpt-test")]["BilledCost"] == "0.048"  # 12000 x $3/M + 800 x $15/M, from prices
    assert models[("alice-bot", "gpt-test")]["ConsumedQuantity"] == "12800"
    assert models[("bob-bot", "claude-test")]["BilledCost"] == "0.25"  # reported with /v1/usage

    # Each row's quantity is its session's and tool's sum over the records, and its tags name them.
    records = [
        json.loads(line) for f in audit_files(tmp_path / "state" / "audit.jsonl") for line in f.read_text().splitlines()
    ]
    metered: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        if r["event"] == "tool.result":
            metered[(r["session"], f"{r['server']}.{r['tool']}")] += r["request_tokens"] + r["response_tokens"]
    tools = {(json.loads(r["Tags"])["session"], r["ResourceId"]): r for r in rows if r["ResourceType"] == "MCP Tool"}
    assert {key: int(r["ConsumedQuantity"]) for key, r in tools.items()} == metered
    sessions = {r["session"]: r for r in records if r["event"] == "session.opened"}
    for (sid, tool), row in tools.items():
        tags = json.loads(row["Tags"])
        assert (tags["agent"], tags["owner"], tags["task"], tags["tool"]) == (
            sessions[sid]["agent"],
            sessions[sid]["owner"],
            sessions[sid]["task"],
            tool,
        )
        assert row["ServiceName"] == "counter"


DAY = 86400.0
START = datetime(2026, 11, 29, tzinfo=UTC).timestamp()  # three days across a month's end
COSTS = st.sampled_from([0.0, 0.1, 0.25, 0.048, 1e-9, 0.333333333, 12.5])


@st.composite
def usage_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 30))):
        ts = START + draw(st.floats(0, 3 * DAY - 1e-3))
        agent = draw(st.sampled_from(["a", "b"]))
        base = {
            "ts": ts,
            "agent": agent,
            "owner": f"{agent}@example.com",
            "cost_center": draw(st.sampled_from([None, "research", "ops"])),
            "session": f"s-{agent}-{draw(st.integers(0, 2))}",
            "task": "t",
        }
        kind = draw(st.sampled_from(["call", "result", "model", "deny"]))
        if kind == "call":
            out.append({**base, "event": "tool.call", "decision": "allow", "server": "time", "tool": "now"})
        elif kind == "deny":
            out.append(
                {
                    **base,
                    "event": "tool.call",
                    "decision": "deny",
                    "reason": "session_calls",
                    "server": "time",
                    "tool": "now",
                }
            )
        elif kind == "result":
            out.append(
                {
                    **base,
                    "event": "tool.result",
                    "server": "time",
                    "tool": draw(st.sampled_from(["now", "x"])),
                    "request_tokens": draw(st.integers(0, 500)),
                    "response_tokens": draw(st.integers(0, 5000)),
                }
            )
        else:
            out.append(
                {
                    **base,
                    "event": "model.usage",
                    "model": draw(st.sampled_from(["m1", "m2"])),
                    "input_tokens": draw(st.integers(0, 10**6)),
                    "output_tokens": draw(st.integers(0, 10**5)),
                    "cost_usd": draw(COSTS),
                }
            )
    out.sort(key=lambda r: r["ts"])
    return out


@settings(max_examples=150, deadline=None)
@given(usage_records(), st.integers(0, 2))
def test_each_days_rows_add_up_to_that_days_chargeback_totals(records, first_day):
    since = START + first_day * DAY
    header, rows = parse(render_focus(records, since, None, "acct"))
    assert header == list(COLUMNS)
    for day in range(first_day, 3):
        start = START + day * DAY
        totals = build(records, "agent", start, start + DAY).totals
        mine = [r for r in rows if r["ChargePeriodStart"] == datetime.fromtimestamp(start, UTC).strftime(MOMENT)]
        for row in mine:
            conforms(row)
        assert sum(int(r["ConsumedQuantity"]) for r in mine) == sum(
            int(totals[k]) for k in ("request_tokens", "response_tokens", "model_input_tokens", "model_output_tokens")
        )
        assert sum(int(r["x_Calls"]) for r in mine) == totals["calls"]
        billed = sum((Decimal(r["BilledCost"]) for r in mine), Decimal(0))
        assert billed == sum(
            (
                Decimal(repr(r["cost_usd"]))
                for r in records
                if r["event"] == "model.usage" and start <= r["ts"] < start + DAY
            ),
            Decimal(0),
        )
        assert abs(billed - Decimal(repr(totals["cost_usd"]))) < Decimal("1e-9")  # the report sums floats
        for row in mine:
            assert row["SubAccountId"] == (json.loads(row["Tags"]).get("cost_center") or "")
    assert all(datetime.strptime(r["ChargePeriodStart"], MOMENT).timestamp() >= since for r in rows)
