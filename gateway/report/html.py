"""The HTML report: one self-contained file, charts as inline SVG, no scripts or fonts fetched.

The report's JSON travels inside the page (`<script type="application/json"
id="report-data">`) so the numbers behind every chart can be read back.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
_OUTCOME_COLOURS = {"closed": "#16a34a", "expired": "#d97706", "revoked": "#dc2626", "open": "#6b7280"}
_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#111827}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.25rem .6rem;border-bottom:1px solid #e5e7eb;text-align:right}
td:first-child,th:first-child{text-align:left}tr.total td{font-weight:600;border-top:2px solid #111827}
.charts{display:flex;flex-wrap:wrap;gap:2rem}.chart{border:1px solid #e5e7eb;padding:.5rem}
svg text{font:11px system-ui,sans-serif;fill:#374151}.muted{color:#6b7280}#evidence td{text-align:left}
"""


def _label(row: dict[str, Any], by: str) -> str:
    owner = row.get("server_owner")
    return f"{row[by]} ({owner})" if owner else str(row[by])


def render_html(data: dict[str, Any]) -> str:
    by = data["by"]
    evidence = data["evidence"]
    charts = data["charts"]
    metrics = list(data["totals"])  # the report's columns, in its order
    rows = "".join(
        f"<tr><td>{escape(_label(row, by))}</td>" + "".join(f"<td>{_fmt(row[m])}</td>" for m in metrics) + "</tr>"
        for row in data["rows"]
    )
    totals = "".join(f"<td>{_fmt(data['totals'][m])}</td>" for m in metrics)
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    window = f"{data['since'] or 'the start'} to {data['until'] or 'now'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>MCP gateway report by {escape(by)}</title><style>{_STYLE}</style></head>
<body>
<h1>Chargeback and evidence, by {escape(by)}</h1>
<p class="muted">{escape(window)} &middot; {data["records"]} audit records from {len(data["sources"])} file(s)</p>
<div class="charts">
<div class="chart" id="chart-spend"><h2>Spend by agent over time</h2>
<p class="muted">metered and model tokens per {_bucket(charts["spend_by_agent"])}, stacked by agent;
cost in the legend</p>
{spend_chart(charts["spend_by_agent"])}</div>
<div class="chart" id="chart-tools"><h2>Top tools by response tokens</h2>
{bars(charts["top_tools_by_response_tokens"], _PALETTE[0])}</div>
<div class="chart" id="chart-outcomes"><h2>Session outcomes</h2>
{bars([(k, v) for k, v in charts["session_outcomes"].items()], None)}</div>
</div>
<h2>Totals</h2>
<table><thead><tr><th>{escape(by)}</th>{"".join(f"<th>{m}</th>" for m in metrics)}</tr></thead>
<tbody>{rows}<tr class="total"><td>TOTAL</td>{totals}</tr></tbody></table>
<h2>Evidence</h2>
{_evidence(evidence)}
<script type="application/json" id="report-data">{payload}</script>
</body></html>
"""


def _bucket(spend: dict[str, Any]) -> str:
    return "hour" if spend["bucket_seconds"] == 3600 else "day"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6f}"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _evidence(evidence: dict[str, Any]) -> str:
    """Each share with what the actions it did not count lacked, one line per reason."""
    outcome_shares = evidence["by_session_outcome_share"]
    shares = evidence["shares"]

    def row(name: str) -> tuple[str, str, list[str]]:
        share = shares[name]
        return (
            share["label"].capitalize(),
            f"{_share(share['value'])} ({share['counted']:,} of {share['total']:,})",
            share["explanations"],
        )

    items: list[tuple[str, str, list[str]]] = [
        ("Actions", f"{evidence['actions']:,}", []),
        row("unique_identity"),
        row("grant"),
        row("closed_cleanly"),
        ("In a session that expired", _share(outcome_shares["expired"]), []),
        ("In a session that was revoked", _share(outcome_shares["revoked"]), []),
        ("In a session still open", _share(outcome_shares["open"]), []),
        row("without_stored_secret"),
        row("sender_constrained"),
        (
            "Shared-credential flags",
            f"{evidence['shared_credential_flags']}"
            + (f" ({escape(', '.join(evidence['flagged_agents']))})" if evidence["flagged_agents"] else ""),
            [],
        ),
    ]
    return (
        '<table id="evidence">'
        + "".join(
            f'<tr><td>{k}</td><td>{v}</td><td class="muted">'
            + "".join(f'<div class="lacked">not counted: {escape(line)}</div>' for line in lines)
            + "</td></tr>"
            for k, v, lines in items
        )
        + "</table>"
    )


def spend_chart(spend: dict[str, Any]) -> str:
    """Tokens per bucket as columns stacked by agent; each block's tooltip has its tokens and cost."""
    buckets, series = spend["buckets"], spend["series"]
    if not buckets:
        return '<p class="muted">No metered spend in this period.</p>'
    width, height, left, bottom, top = 560, 260, 60, 56, 16
    stacks = [sum(s["tokens"][i] for s in series.values()) for i in range(len(buckets))]
    peak = max([1, *stacks])
    slot = (width - left - 10) / len(buckets)
    scale = (height - bottom - top) / peak
    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#9ca3af"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - bottom + 14}">{escape(buckets[0])}</text>',
    ]
    if len(buckets) > 1:
        parts.append(
            f'<text x="{width - 10}" y="{height - bottom + 14}" text-anchor="end">{escape(buckets[-1])}</text>'
        )
    for i, bucket in enumerate(buckets):
        base = height - bottom
        for n, (agent, values) in enumerate(series.items()):
            tokens, cost = values["tokens"][i], values["cost_usd"][i]
            if not tokens:
                continue
            block = tokens * scale
            base -= block
            parts.append(
                f'<rect x="{left + i * slot + slot * 0.15:.1f}" y="{base:.1f}" width="{slot * 0.7:.1f}" '
                f'height="{block:.1f}" fill="{_PALETTE[n % len(_PALETTE)]}"><title>{escape(agent)} '
                f"{escape(bucket)}: {tokens:,} tokens, ${cost:,.4f}</title></rect>"
            )
    for n, (agent, values) in enumerate(series.items()):
        x = left + 135 * (n % 4)
        y = height - 24 + 14 * (n // 4)
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{_PALETTE[n % len(_PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{y}">{escape(agent[:16])} ${sum(values["cost_usd"]):,.2f}</text>'
        )
    height += 14 * ((len(series) - 1) // 4)
    return f'<svg width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def bars(items: list[tuple[str, int]] | list[list[Any]], colour: str | None) -> str:
    """Horizontal bars with their values; colours by session outcome when `colour` is None."""
    if not items or not any(value for _, value in items):
        return '<p class="muted">Nothing to show in this period.</p>'
    width, label, row = 560, 200, 24
    peak = max(value for _, value in items) or 1
    parts = []
    for i, (name, value) in enumerate(items):
        fill = colour or _OUTCOME_COLOURS.get(str(name), _PALETTE[0])
        bar = (width - label - 80) * value / peak
        y = 8 + i * row
        parts.append(
            f'<text x="{label - 6}" y="{y + 13}" text-anchor="end">{escape(str(name)[:32])}</text>'
            f'<rect x="{label}" y="{y}" width="{bar:.1f}" height="{row - 8}" fill="{fill}">'
            f"<title>{escape(str(name))}: {value:,}</title></rect>"
            f'<text x="{label + bar + 6:.1f}" y="{y + 13}">{value:,}</text>'
        )
    height = 16 + len(items) * row
    return f'<svg width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
