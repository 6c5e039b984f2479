"""The Prometheus series the audit stream feeds, counted as each record is written.

Calls, latency, tokens and budget stops are read off the records the pipeline
and the budgets already write, so /metrics and the ledger can never disagree.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.events import Event
from gateway.audit.records import RESULT_EVENTS
from gateway.metrics import METRICS

CALLS = METRICS.counter(
    "gateway_tool_calls_total",
    "Tool calls by agent, server, tool and decision",
    ["agent", "server", "tool", "decision"],
)
LATENCY = METRICS.histogram(
    "gateway_tool_call_duration_seconds", "Tool calls from admission to the recorded result", ["server", "tool"]
)
TOKENS = METRICS.counter(
    "gateway_tokens_total",
    "Tokens by agent, server and direction: request|response (metered tool traffic), model_input|model_output "
    "(model usage the agent runtime reported)",
    ["agent", "server", "direction"],
)
STOPS = METRICS.counter(
    "gateway_budget_stops_total", "Sessions stopped by a budget, by agent and limit", ["agent", "limit"]
)
RECORDS = METRICS.counter("gateway_audit_records_total", "Audit records written, by event", ["event"])
WRITES = METRICS.histogram("gateway_audit_write_seconds", "Audit fsyncs: each makes every record before it durable")
HEALTHY = METRICS.gauge("gateway_audit_healthy", "1 while the audit sink can write, 0 while calls are refused")


_TOKEN_FIELDS = (
    ("request_tokens", "request"),
    ("response_tokens", "response"),
    ("input_tokens", "model_input"),
    ("output_tokens", "model_output"),
)  # the last two: model.usage


def observe(record: dict[str, Any]) -> None:
    event = record["event"]
    RECORDS.inc(event)
    agent, server = record.get("agent") or "", record.get("server") or ""
    if event in RESULT_EVENTS:  # an admission: its request_tokens are counted again, once forwarded, on its outcome
        if event == Event.TOOL_CALL:
            # A name no server offers is the caller's to choose: one label for all of them keeps series bounded.
            tool = (record.get("tool") or "") if server else "(unknown)"
            CALLS.inc(agent, server, tool, record.get("decision") or "")
        return
    if event == Event.DENIALS_AGGREGATED:  # denied calls past the full-record share, counted per session and minute
        denied = (record.get("events") or {}).get(Event.TOOL_CALL)
        if isinstance(denied, int) and denied > 0:
            CALLS.inc(agent, "", "(aggregated)", "deny", amount=denied)
        return
    if event == Event.BUDGET_EXCEEDED:
        STOPS.inc(agent, record.get("reason") or "")
    if event == Event.TOOL_RESULT and record.get("latency_ms") is not None:
        LATENCY.observe(record["latency_ms"] / 1000, server, record.get("tool") or "")
    for name, direction in _TOKEN_FIELDS:
        tokens = record.get(name)
        if tokens:
            TOKENS.inc(agent, server, direction, amount=tokens)
