"""The chargeback report as FOCUS 1.2 CSV, for FinOps tools that load cost data next to cloud bills.

One row per charge period (a UTC day) x session (so agent, owner, cost center and task)
x tool, resource/prompt server or model, from the same per-record contributions the
chargeback report sums (gateway/report/chargeback.py), so the rows add up to its totals. Quantities
are tokens (request + response for tools; input + output for models); costs are the
model usage's `cost_usd` (reported with POST /v1/usage, or priced from `prices`); tool
traffic has no price of its own and costs 0. Columns: FOCUS 1.2's mandatory ones, the
conditional ones that apply (usage quantities, sub account = cost center, resources,
tags), the recommended ChargeFrequency and ServiceSubcategory, and `x_Calls` (custom
columns carry the `x_` prefix FOCUS asks for).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.audit.events import Event
from gateway.report.chargeback import NONE, contribution, group_key, tokens

COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Calls",
)
PRODUCT = "MCP identity gateway"
UNIT = "Tokens"


@dataclass
class _Row:
    record: dict[str, Any]  # the first record of the row: its identity fields
    tool: str
    day: datetime
    tokens: int = 0
    calls: int = 0
    cost: Decimal = field(default_factory=Decimal)


def rows(records: Iterable[dict[str, Any]], since: float | None = None, until: float | None = None) -> list[_Row]:
    """The charges in `since <= ts < until` (the chargeback report's window), oldest day first."""
    found: dict[tuple[str, str, str], _Row] = {}
    for record in records:
        ts = record["ts"]
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        added = contribution(record)
        count = int(tokens(added))
        if not (count or added.get("calls") or added.get("cost_usd")):
            continue  # denials and stops cost nothing and consume nothing
        day = datetime.fromtimestamp(ts, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tool = group_key(record, "tool")
        key = (day.isoformat(), str(record.get("session") or NONE), tool)
        row = found.setdefault(key, _Row(record, tool, day))
        row.tokens += count
        row.calls += int(added.get("calls", 0))
        # The report sums the same floats; decimal from their shortest text keeps each row's cost exact.
        row.cost += Decimal(repr(float(added.get("cost_usd", 0.0))))
    return [found[key] for key in sorted(found)]


def render_focus(
    records: Iterable[dict[str, Any]], since: float | None, until: float | None, billing_account: str
) -> str:
    """FOCUS 1.2 CSV: a header row of COLUMNS, then one row per charge."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows(records, since, until):
        writer.writerow([_cells(row, billing_account).get(column, "") for column in COLUMNS])
    return out.getvalue()


def _cells(row: _Row, billing_account: str) -> dict[str, str]:
    record = row.record
    model = record.get("event") == Event.MODEL_USAGE
    month = row.day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    cost = _decimal(row.cost)
    cost_center = record.get("cost_center")
    server = record.get("server")
    tags = {k: record.get(k) for k in ("agent", "owner", "cost_center", "session", "task", "on_behalf_of")}
    tags["tool"] = record.get("model") if model else row.tool
    what = f"model {record.get('model')}" if model else f"tool {row.tool}"
    return {
        "BilledCost": cost,
        "BillingAccountId": billing_account,
        "BillingAccountName": billing_account,
        "BillingCurrency": "USD",
        "BillingPeriodStart": _time(month),
        "BillingPeriodEnd": _time(next_month),
        "ChargeCategory": "Usage",
        "ChargeClass": "",  # null: not a correction
        "ChargeDescription": f"{what} tokens for agent {record.get('agent') or NONE}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodStart": _time(row.day),
        "ChargePeriodEnd": _time(row.day + timedelta(days=1)),
        "ConsumedQuantity": str(row.tokens),
        "ConsumedUnit": UNIT,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": PRODUCT,
        "ListCost": cost,
        "PricingQuantity": str(row.tokens),
        "PricingUnit": UNIT,
        "ProviderName": PRODUCT,
        "PublisherName": PRODUCT,
        "ResourceId": str(record.get("model") if model else row.tool),
        "ResourceName": str(record.get("model") if model else row.tool),
        "ResourceType": "Model" if model else "MCP Tool",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": str(record.get("model") if model else server or NONE),
        "ServiceSubcategory": "Generative AI" if model else "Other (AI and Machine Learning)",
        "SubAccountId": str(cost_center or ""),
        "SubAccountName": str(cost_center or ""),
        "Tags": json.dumps({k: v for k, v in tags.items() if v is not None}, sort_keys=True),
        "x_Calls": str(row.calls),
    }


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0.0") else text
