"""Chargeback and evidence reports, computed from the audit stream alone.

Sources: the gateway's audit file, its rotated files (`<stem>.<seq>.jsonl` beside
it) and the operator chain (`<stem>-cli.jsonl`). Each record adds to at most
a few metrics of the group it belongs to:

| metric | from |
|---|---|
| calls | `tool.call` with decision allow (forwarded) |
| denials | `tool.call`, `resource.read`, `prompt.get`, `completion.complete` denied for scope (not granted,
  argument rule) |
| stops | the same events denied by a budget, rate or loop limit |
| request_tokens, response_tokens | the outcome records `tool.result`, `resource.result`, `prompt.result`,
  `completion.result`, and `sampling.request` (and the other input requests a call makes); a `resource.read` or
  `prompt.get` that carries an `outcome` (the one record earlier versions wrote after the answer) as well |
| model_input_tokens, model_output_tokens, cost_usd | `model.usage` |

The evidence block answers DESIGN.md's question for every action (a forwarded
tool call, an allowed read, prompt or completion, a model usage report): is it tied to a
unique agent identity (its agent's credential not flagged by `credential.shared_suspected`
around it), to a grant, and to a session that closed cleanly (vs expired, revoked, still
open); was it made by an agent without a stored secret, with a sender-constrained token?
Each share says what the actions it did not count lacked (gateway/report/evidence.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.events import Event
from gateway.audit.files import parse_lines
from gateway.audit.records import SESSION_ENDED
from gateway.report.evidence import SHARED_FLAG, evidence
from gateway.report.html import render_html
from gateway.spend.budgets import STOP_REASONS
from gateway.terminal import safe

GROUPS = ("agent", "owner", "session", "task", "tool", "server")
FORMATS = ("table", "csv", "json", "html")
METRICS = (
    "calls",
    "denials",
    "stops",
    "request_tokens",
    "response_tokens",
    "model_input_tokens",
    "model_output_tokens",
    "cost_usd",
)
TOKENS = ("request_tokens", "response_tokens", "model_input_tokens", "model_output_tokens")
METERED = frozenset(
    {
        Event.TOOL_RESULT,
        Event.RESOURCE_RESULT,
        Event.PROMPT_RESULT,
        Event.COMPLETION_RESULT,
        Event.SAMPLING_REQUEST,
        Event.ELICITATION_REQUEST,
        Event.ROOTS_REQUEST,
        Event.INPUT_REQUEST,
    }
)
GATED = frozenset({Event.TOOL_CALL, Event.RESOURCE_READ, Event.PROMPT_GET, Event.COMPLETION_COMPLETE})
OTHER_METHODS = frozenset({"resource", "prompt", "completion"})  # event prefixes grouped as `server.(resources)`
OUTCOMES = ("closed", "expired", "revoked", "open")
NONE = "(none)"


def read_records(files: Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """Every record in `files`, oldest first, and how many lines were not JSON records."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for path in files:
        with path.open("rb") as handle:
            for record in parse_lines(handle):
                if record is not None and isinstance(record.get("ts"), int | float):
                    records.append(record)
                else:
                    skipped += 1
    records.sort(key=lambda r: r["ts"])
    return records, skipped


# The largest amount one record may carry (what /v1/usage accepts; the meter's counts are far below).
# A value beyond it, negative, or not a number (inf, nan: an old gateway accepted them) is not counted,
# so every total stays a finite JSON number; the report says how many were left out.
MAX_RECORD_TOKENS = 1_000_000_000
MAX_RECORD_COST_USD = 1_000_000.0
INVALID = "invalid_values"  # the key `contribution` counts left-out values under


def _amount(value: Any, maximum: float, *, integer: bool) -> float | None:
    """A record's amount if it is a valid one (absent: 0), else None."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        return None
    if not math.isfinite(value) or not 0 <= value <= maximum:
        return None
    return int(value) if integer else float(value)


def contribution(record: dict[str, Any]) -> dict[str, float]:
    """What one audit record adds to its group's metrics (empty for records that add nothing).

    Invalid amounts are left out and counted under INVALID.
    """
    event = record.get("event")
    out: dict[str, float] = {}
    if event in GATED:
        decision = record.get("decision")
        if decision == "deny":
            if record.get("reason") != SESSION_ENDED:  # an ended session is neither a scope denial nor a stop
                out["stops" if record.get("reason") in STOP_REASONS else "denials"] = 1
            return out
        if event == Event.TOOL_CALL and decision == "allow":
            out["calls"] = 1
            return out
    if event == Event.DENIALS_AGGREGATED and isinstance(record.get("reasons"), dict):
        for reason, count in record["reasons"].items():
            amount = _amount(count, MAX_RECORD_TOKENS, integer=True)
            if amount is None:
                out[INVALID] = out.get(INVALID, 0) + 1
            else:
                metric = "stops" if reason in STOP_REASONS else "denials"
                out[metric] = out.get(metric, 0) + amount
        return out
    # Outcome records; or the one-record read of an earlier version.
    if event in METERED or (event in GATED and "outcome" in record):
        amounts: dict[str, tuple[str, float, bool]] = {
            "request_tokens": ("request_tokens", MAX_RECORD_TOKENS, True),
            "response_tokens": ("response_tokens", MAX_RECORD_TOKENS, True),
        }
    elif event == Event.MODEL_USAGE:
        amounts = {
            "model_input_tokens": ("input_tokens", MAX_RECORD_TOKENS, True),
            "model_output_tokens": ("output_tokens", MAX_RECORD_TOKENS, True),
            "cost_usd": ("cost_usd", MAX_RECORD_COST_USD, False),
        }
    else:
        return out
    for metric, (name, maximum, integer) in amounts.items():
        amount = _amount(record.get(name), maximum, integer=integer)
        if amount is None:
            out[INVALID] = out.get(INVALID, 0) + 1
        else:
            out[metric] = amount
    return out


def group_key(record: dict[str, Any], by: str) -> str:
    """The group a record belongs to under `--by`."""
    event = record.get("event")
    if by == "tool":
        if event == Event.MODEL_USAGE:
            return f"(model) {record.get('model')}"
        kind = str(event).split(".")[0]
        if kind in OTHER_METHODS:
            return f"{record.get('server') or NONE}.({kind}s)"
        return f"{record['server']}.{record['tool']}" if record.get("server") and record.get("tool") else NONE
    if by == "server" and event == Event.MODEL_USAGE:
        return "(model)"
    return str(record.get(by) or NONE)


def is_action(record: dict[str, Any]) -> bool:
    """Something that happened on an agent's behalf: a forwarded call, an allowed read, prompt or completion,
    model usage."""
    event = record.get("event")
    return event == Event.MODEL_USAGE or (event in GATED and record.get("decision") == "allow")


def session_outcome(closed: dict[str, Any] | None) -> str:
    if closed is None:
        return "open"
    state = closed.get("state")
    return state if state in ("closed", "expired") else "revoked"


@dataclass
class Report:
    by: str
    since: float | None
    until: float | None
    sources: list[str]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    evidence: dict[str, Any] = field(default_factory=dict)
    charts: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    skipped_lines: int = 0
    owners: dict[str, str] = field(default_factory=dict)  # server -> its manifest's owner, from the records
    invalid_values: int = 0  # amounts left out of every total (see MAX_RECORD_TOKENS)

    def as_json(self) -> dict[str, Any]:
        rows = [
            {
                self.by: key,
                **({"server_owner": self.owners.get(key)} if self.by == "server" else {}),
                **_rounded(values),
            }
            for key, values in sorted(self.rows.items(), key=_by_spend)
        ]
        return {
            "by": self.by,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "sources": self.sources,
            "records": self.records,
            "skipped_lines": self.skipped_lines,
            "invalid_values": self.invalid_values,
            "rows": rows,
            "totals": _rounded(self.totals),
            "evidence": self.evidence,
            "charts": self.charts,
        }


def _by_spend(item: tuple[str, dict[str, float]]) -> tuple[float, str]:
    values = item[1]
    return -(values["cost_usd"] * 1e9 + tokens(values) + values["calls"]), item[0]


def tokens(values: dict[str, Any]) -> float:
    """The tokens of every kind in a contribution or a row (absent kinds: 0)."""
    total: float = sum(values.get(k, 0) for k in TOKENS)
    return total


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) if k == "cost_usd" else int(v) for k, v in values.items()}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def build(
    records: list[dict[str, Any]],
    by: str,
    since: float | None = None,
    until: float | None = None,
    sources: list[str] | None = None,
    skipped_lines: int = 0,
) -> Report:
    """The report over `records` with `since <= ts < until`, grouped `by`."""
    if by not in GROUPS:
        raise ValueError(f"--by must be one of {', '.join(GROUPS)}")
    closed = {r["session"]: r for r in records if r.get("event") == Event.SESSION_CLOSED and r.get("session")}
    window = [r for r in records if (since is None or r["ts"] >= since) and (until is None or r["ts"] < until)]
    report = Report(by, since, until, sources or [], records=len(window), skipped_lines=skipped_lines)
    tools: dict[str, int] = defaultdict(int)
    report.owners = {
        r["server"]: r["server_owner"]
        for r in window
        if isinstance(r.get("server"), str) and isinstance(r.get("server_owner"), str)
    }
    contributions = [(record, contribution(record)) for record in window]
    for record, added in contributions:
        report.invalid_values += int(added.pop(INVALID, 0))
        if not added:
            continue
        row = report.rows.setdefault(group_key(record, by), dict.fromkeys(METRICS, 0))
        for metric, amount in added.items():
            row[metric] += amount
            report.totals[metric] += amount
        if added.get("response_tokens"):
            tools[group_key(record, "tool")] += int(added["response_tokens"])
    report.evidence = _evidence(window, closed, records)
    report.charts = {
        "spend_by_agent": _spend_over_time(contributions, since, until),
        "top_tools_by_response_tokens": sorted(tools.items(), key=lambda kv: (-kv[1], kv[0]))[:10],
        "session_outcomes": report.evidence["sessions"],
    }
    return report


def _evidence(
    window: list[dict[str, Any]], closed: dict[str, dict[str, Any]], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The evidence block; every share comes with what the actions it did not count lacked (gateway.evidence)."""
    flags = [r for r in window if r.get("event") == SHARED_FLAG]
    flagged = {r.get("agent") for r in flags if r.get("agent")}
    actions = [r for r in window if is_action(r)]
    explained = evidence(actions, records, lambda r: session_outcome(closed.get(r.get("session", ""))))
    shares = explained["shares"]
    tied = {"unique_identity": shares["unique_identity"]["counted"], "grant": shares["grant"]["counted"]}
    by_outcome = dict.fromkeys(OUTCOMES, 0)
    for record in actions:
        by_outcome[session_outcome(closed.get(record.get("session", "")))] += 1
    sessions = {r["session"] for r in window if r.get("session") and (is_action(r) or r.get("event") in GATED)}
    session_counts = dict.fromkeys(OUTCOMES, 0)
    for sid in sessions:
        session_counts[session_outcome(closed.get(sid))] += 1
    total = len(actions)

    def share(count: int) -> float | None:
        return round(count / total, 4) if total else None

    return {
        "actions": total,
        "tied_to_unique_identity": tied["unique_identity"],
        "tied_to_unique_identity_share": share(tied["unique_identity"]),
        "tied_to_grant": tied["grant"],
        "tied_to_grant_share": share(tied["grant"]),
        "by_session_outcome": by_outcome,
        "by_session_outcome_share": {k: share(v) for k, v in by_outcome.items()},
        "closed_cleanly_share": share(by_outcome["closed"]),
        "sessions": session_counts,
        "shared_credential_flags": len(flags),
        "flagged_agents": sorted(a for a in flagged if isinstance(a, str)),
        "without_stored_secret": shares["without_stored_secret"]["counted"],
        "without_stored_secret_share": shares["without_stored_secret"]["value"],
        "sender_constrained": shares["sender_constrained"]["counted"],
        "sender_constrained_share": shares["sender_constrained"]["value"],
        "by_credential": explained["by_credential"],
        "shares": shares,
    }


def _spend_over_time(
    contributions: list[tuple[dict[str, Any], dict[str, float]]], since: float | None, until: float | None
) -> dict[str, Any]:
    """Tokens and cost per agent per bucket: hours when the report spans two days or less, else days.

    `contributions`: each record in the window, with what it adds to its group's metrics.
    """
    stamps = [r["ts"] for r, _ in contributions]
    start = since if since is not None else min(stamps, default=time.time())
    end = until if until is not None else max(stamps, default=start)
    step = 3600 if end - start <= 2 * 86400 else 86400
    buckets: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for record, added in contributions:
        count = tokens(added)
        if count or added.get("cost_usd"):
            cell = buckets[str(record.get("agent") or NONE)][int(record["ts"] // step * step)]
            cell[0] += count
            cell[1] += added.get("cost_usd", 0.0)
    times = sorted({t for series in buckets.values() for t in series})
    return {
        "bucket_seconds": step,
        "buckets": [_iso(t) for t in times],
        "series": {
            agent: {
                "tokens": [int(series.get(t, [0, 0])[0]) for t in times],
                "cost_usd": [round(series.get(t, [0, 0])[1], 6) for t in times],
            }
            for agent, series in sorted(buckets.items())
        },
    }


# ------------------------------------------------------------------ formats


_HEADINGS = ("calls", "denials", "stops", "req tok", "resp tok", "model in", "model out", "cost USD")


def render(report: Report, fmt: str) -> str:
    """The report as text in one of FORMATS."""
    data = report.as_json()
    if fmt == "json":
        return json.dumps(data, indent=2, allow_nan=False) + "\n"  # JSON has no inf or nan: fail, never emit them
    if fmt == "csv":
        return _csv(data)
    if fmt == "html":
        return render_html(data)
    if fmt == "table":
        return _table(data)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}")


def _lines(data: dict[str, Any], *, owner_column: bool = False) -> Iterator[list[str]]:
    """Rows as cells; by server, the manifest owner rides in the label (table) or a column of its own (csv)."""
    owners = data["by"] == "server"
    for row in data["rows"]:
        label, owner = str(row[data["by"]]), row.get("server_owner") or ""
        if owners and not owner_column and owner:
            label = f"{label} ({owner})"
        yield [label, *([owner] if owners and owner_column else []), *(_cell(row[m]) for m in METRICS)]
    yield ["TOTAL", *([""] if owners and owner_column else []), *(_cell(data["totals"][m]) for m in METRICS)]


def _cell(value: float) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([data["by"], *(["server_owner"] if data["by"] == "server" else []), *METRICS])
    writer.writerows(_lines(data, owner_column=True))
    return out.getvalue()


def _table(data: dict[str, Any]) -> str:
    lines = [[safe(line[0]), *line[1:]] for line in _lines(data)]  # group keys: agent-chosen tasks, tool names
    width = max([len(data["by"]), *(len(line[0]) for line in lines)])
    out = [f"{data['by'].upper():<{width}}  " + "  ".join(f"{h:>10}" for h in _HEADINGS)]
    out += [f"{line[0]:<{width}}  " + "  ".join(f"{c:>10}" for c in line[1:]) for line in lines]
    evidence = data["evidence"]
    actions = evidence["actions"]
    out += ["", f"Evidence over {actions} action(s) from {data['since'] or 'the start'} to {data['until'] or 'now'}:"]
    if actions:
        shares = evidence["shares"]
        for name in ("unique_identity", "grant", "closed_cleanly", "without_stored_secret", "sender_constrained"):
            share = shares[name]
            out.append(f"  {share['label']:<33}{share['value']:.1%} ({share['counted']} of {share['total']})")
            if name == "closed_cleanly":
                out.append(
                    "    in sessions that  "
                    + ", ".join(
                        f"{outcome if outcome != 'open' else 'are still open'} {value:.1%}"
                        for outcome, value in evidence["by_session_outcome_share"].items()
                    )
                )
            out += [f"    not counted: {safe(sentence)}" for sentence in share["explanations"]]
    out.append(
        f"  shared-credential flags          {evidence['shared_credential_flags']}"
        + (f" ({', '.join(map(safe, evidence['flagged_agents']))})" if evidence["flagged_agents"] else "")
    )
    return "\n".join(out) + "\n"
