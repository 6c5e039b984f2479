"""After a crash: the calls the previous run admitted but never closed get an `interrupted` outcome.

The pipeline writes one outcome record after every admission (`tool.call` allow
-> `tool.result`, `resource.read` allow -> `resource.result`, ...), even when the
call is cancelled. Only a process killed mid-call leaves an admission without
one. At startup, before its `gateway.started`, the gateway reads its own chain
backwards, newest file first, as far as the previous run's `gateway.started`
(everything that run admitted comes after it; earlier runs were closed by their
own restarts) and at most `MAX_SCAN` records, and writes an outcome record with
`outcome: interrupted` for each admission without one.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.events import Event
from gateway.audit.files import records_backwards, stream_files
from gateway.audit.records import RESULT_EVENTS
from gateway.audit.sink import Audit

MAX_SCAN = 100_000  # records read back at most: the bound on startup time after a long run
ERROR = "the gateway stopped before the call completed"
_NOT_COPIED = frozenset(
    {"ts", "event", "seq", "prev_hash", "hash", "gateway", "decision", "reason", "arguments", "arguments_masked"}
)
_OUTCOMES = frozenset(RESULT_EVENTS.values())


def open_admissions(audit: Audit, limit: int = MAX_SCAN) -> list[dict[str, Any]]:
    """This instance's admissions since its last `gateway.started` that have no outcome record, oldest first."""
    closed: set[str] = set()
    found: list[dict[str, Any]] = []
    for scanned, record in enumerate(records_backwards(reversed(stream_files(audit.path)))):
        if scanned >= limit:
            break
        if record.get("gateway") != audit.instance:
            continue
        event, call_id = record.get("event"), record.get("call_id")
        if event == Event.GATEWAY_STARTED:
            break
        if event in _OUTCOMES and isinstance(call_id, str):
            closed.add(call_id)  # read before its admission: the scan runs backwards
        elif event in RESULT_EVENTS and record.get("decision") == "allow" and call_id not in closed:
            found.append(record)
    return found[::-1]


async def close_interrupted(audit: Audit) -> int:
    """Write an `interrupted` outcome for each admission the previous run left open; return how many."""
    admissions = open_admissions(audit)
    for admission in admissions:
        fields = {k: v for k, v in admission.items() if k not in _NOT_COPIED}
        await audit.emit(
            RESULT_EVENTS[admission["event"]], **fields, outcome="interrupted", error=ERROR, response_tokens=0
        )
    return len(admissions)
