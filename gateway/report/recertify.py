"""`report --recertify`: the evidence an access review of agents needs, one row per agent.

Per agent: its owner, how it authenticates and how old that credential is, its lifecycle
(expires, disable_after_idle, credential_max_age), its last use, the granted tools it never
used in the window, its sessions and its spend.

Sources: the store's agent rows (owner, grant, credential times, last token) and its sessions
(last call, sessions opened), agents.yaml for the lifecycle it sets, the manifests and the
audit stream for the tool names a grant's patterns stand for, and the audit stream for use
and spend (`gateway/report/chargeback.py`'s reader and totals).

"Granted tools never used" expands each grant pattern (`time.*`) against the tools known to
exist: every tool named in a manifest (its `tools:` list or its `pins:`) and every tool any
agent's call names in the audit records read. A granted tool no manifest names and nobody
ever called cannot be named without starting its server, so a pattern that matches no known
tool and no call of this agent is listed as the pattern itself.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from gateway.audit.events import Event
from gateway.config.files import AgentLifecycle, AgentSpec, glob_matches
from gateway.identity.agents import resolve
from gateway.identity.lifecycle import credential_of, credential_set_at, days, iso, last_use, policy
from gateway.report.chargeback import build, tokens
from gateway.store.base import AgentRecord, SessionRecord
from gateway.terminal import safe
from gateway.upstream.manifests import UpstreamSpec

FORMATS = ("table", "csv", "json", "html")
COLUMNS = (
    "agent",
    "owner",
    "source",
    "disabled",
    "credential",
    "credential_age_days",
    "expires",
    "last_used",
    "sessions",
    "calls",
    "tokens",
    "cost_usd",
    "unused_granted_tools",
    "findings",
)


@dataclass(frozen=True)
class Inputs:
    records: list[AgentRecord]
    specs: Mapping[str, AgentSpec]
    defaults: AgentLifecycle
    sessions: list[SessionRecord]
    manifests: Mapping[str, UpstreamSpec]
    audit: list[dict[str, Any]]


def known_tools(manifests: Mapping[str, UpstreamSpec], audit: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """Every (server, tool) a manifest names or an audit record shows being called."""
    known = {(name, tool) for name, spec in manifests.items() for tool in (*(spec.tools or ()), *spec.pins)}
    known |= {
        (r["server"], r["tool"])
        for r in audit
        if r.get("event") == Event.TOOL_CALL and isinstance(r.get("server"), str) and isinstance(r.get("tool"), str)
    }
    return known


def _matching(server: str, tool: str, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(s, t) for s, t in pairs if glob_matches(server, s) and glob_matches(tool, t)}


def unused_granted(
    patterns: Iterable[tuple[str, str]], used: set[tuple[str, str]], known: set[tuple[str, str]]
) -> list[str]:
    """The granted tools (or, where none is known, the patterns) this agent did not call."""
    out: set[str] = set()
    for server, tool in patterns:
        named = _matching(server, tool, known)
        if named:
            out |= {f"{s}.{t}" for s, t in named - used}
        elif not _matching(server, tool, used):
            out.add(f"{server}.{tool}")
    return sorted(out)


def build_recertification(inputs: Inputs, since: float, until: float, sources: list[str]) -> dict[str, Any]:
    """One row per agent over `since <= ts < until`, as JSON-ready data."""
    window = [r for r in inputs.audit if since <= r["ts"] < until]
    spend = build(inputs.audit, "agent", since, until).as_json()["rows"]
    spend_by = {row["agent"]: row for row in spend}
    used: dict[str, set[tuple[str, str]]] = defaultdict(set)
    last_action: dict[str, float] = {}
    for r in window:
        agent = r.get("agent")
        if not isinstance(agent, str):
            continue
        if r.get("event") == Event.TOOL_CALL and r.get("decision") == "allow" and r.get("server") and r.get("tool"):
            used[agent].add((str(r["server"]), str(r["tool"])))
        if r.get("event") in (
            Event.TOOL_CALL,
            Event.SESSION_OPENED,
            Event.RESOURCE_READ,
            Event.PROMPT_GET,
            Event.MODEL_USAGE,
        ):
            last_action[agent] = max(last_action.get(agent, 0.0), float(r["ts"]))
    last_seen: dict[str, float] = {}
    opened: dict[str, int] = defaultdict(int)
    for session in inputs.sessions:
        last_seen[session.agent] = max(last_seen.get(session.agent, 0.0), session.last_seen)
        if since <= session.created_at < until:
            opened[session.agent] += 1
    known = known_tools(inputs.manifests, inputs.audit)
    rows = []
    for record in inputs.records:
        agent = resolve(record, inputs.specs)
        rules = policy(agent, inputs.defaults)
        kind = credential_of(agent)
        set_at = credential_set_at(agent, kind)
        age = until - set_at if set_at is not None else None
        used_at = max(last_use(agent, last_seen.get(agent.id)), last_action.get(agent.id, 0.0))
        ever_used = agent.last_used is not None or agent.id in last_seen or agent.id in last_action
        grant = agent.grant
        unused = unused_granted(grant.tools, used[agent.id], known)
        money = spend_by.get(agent.id, {})
        findings = []
        if agent.disabled:
            findings.append("disabled")
        if not ever_used or used_at < since:
            findings.append("not used in the window")
        if rules.credential_max_age is not None and age is not None and age > rules.credential_max_age:
            findings.append("credential older than credential_max_age: rotate it")
        if rules.expires is None:
            findings.append("no expiry")
        if unused:
            findings.append(f"{len(unused)} granted tool(s) unused: narrow the grant")
        rows.append(
            {
                "agent": agent.id,
                "owner": agent.owner,
                "cost_center": agent.cost_center,
                "source": agent.source,
                "disabled": agent.disabled,
                "credential": kind,
                "credential_set_at": iso(set_at) if set_at is not None else None,
                "credential_age_days": round(age / 86400, 1) if age is not None else None,
                "credential_max_age_days": (
                    float(days(rules.credential_max_age)) if rules.credential_max_age is not None else None
                ),
                "expires": iso(rules.expires) if rules.expires is not None else None,
                "disable_after_idle_days": (
                    float(days(rules.disable_after_idle)) if rules.disable_after_idle is not None else None
                ),
                "last_used": iso(used_at) if ever_used else None,
                "granted_tools": [f"{s}.{t}" for s, t in grant.tools],
                "used_tools": sorted(f"{s}.{t}" for s, t in used[agent.id]),
                "unused_granted_tools": unused,
                "sessions": opened[agent.id],
                "calls": int(money.get("calls", 0)),
                "tokens": int(tokens(money)),
                "cost_usd": float(money.get("cost_usd", 0.0)),
                "findings": findings,
            }
        )
    return {"kind": "recertification", "since": iso(since), "until": iso(until), "sources": sources, "agents": rows}


# ------------------------------------------------------------------ formats


def _cells(row: dict[str, Any]) -> list[str]:
    def text(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    return [text(row[c]) for c in COLUMNS]


def render_recertification(data: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(_cells(row) for row in data["agents"])
        return out.getvalue()
    if fmt == "html":
        return _html(data)
    if fmt == "table":
        return _table(data)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}")


_TABLE = (
    "agent",
    "owner",
    "credential",
    "credential_age_days",
    "last_used",
    "sessions",
    "calls",
    "tokens",
    "cost_usd",
    "unused_granted_tools",
    "findings",
)


def _table(data: dict[str, Any]) -> str:
    # Agent ids are checked, but owners, tool names from the audit and findings reach the terminal too: all escaped.
    lines = [
        [safe(cell) for cell, name in zip(_cells(row), COLUMNS, strict=True) if name in _TABLE]
        for row in data["agents"]
    ]
    headings = [h.upper().replace("_", " ") for h in _TABLE]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(headings)]
    out = [f"Access review from {data['since']} to {data['until']} ({len(lines)} agent(s))", ""]
    out.append("  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)).rstrip())
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out) + "\n"


def _html(data: dict[str, Any]) -> str:
    from gateway.report.html import _STYLE

    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in _cells(row)) + "</tr>" for row in data["agents"]
    )
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    window = f"{data['since']} to {data['until']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>MCP gateway access review</title><style>{_STYLE}</style></head>
<body>
<h1>Agent access review</h1>
<p class="muted">{escape(window)} &middot; {len(data["agents"])} agent(s)</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<script type="application/json" id="report-data">{payload}</script>
</body></html>
"""
