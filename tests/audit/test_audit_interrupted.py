"""The startup scan for admissions a crash left open: exactly those since the last start, across rotations.

The end-to-end case (a real gateway killed mid-call, restarted) is tests/test_outcomes.py; this checks the scan
itself over every shape of stream.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.files import rotated_path
from gateway.audit.gateway_sink import GatewaySink
from gateway.audit.interrupted import close_interrupted, open_admissions
from gateway.audit.records import RESULT_EVENTS

INSTANCE = "gw-1"
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(sorted(RESULT_EVENTS)), st.sampled_from(["allow", "deny"])),
        st.tuples(st.just("close"), st.integers(0, 30)),  # the outcome of the n-th admission so far, if open
        st.just(("started",)),
        st.just(("foreign",)),  # another instance's admission in the same file: never this one's to close
        st.just(("noise",)),  # a line that is not a record
    ),
    max_size=40,
)


def stream(steps: list[tuple[Any, ...]]) -> tuple[list[dict[str, Any] | None], list[str]]:
    """The records the steps write, and the call ids a scan should find open (oldest first)."""
    records: list[dict[str, Any] | None] = []
    admitted: list[dict[str, Any]] = []
    closed: set[str] = set()
    since_start: list[str] = []
    for step in steps:
        if step[0] == "admit":
            record = {
                "event": step[1],
                "gateway": INSTANCE,
                "decision": step[2],
                "call_id": f"c{len(admitted)}",
                "session": "s1",
                "request_tokens": 2,
            }
            admitted.append(record)
            records.append(record)
            if step[2] == "allow":
                since_start.append(record["call_id"])
        elif step[0] == "close" and step[1] < len(admitted) and admitted[step[1]]["call_id"] not in closed:
            admission = admitted[step[1]]
            closed.add(admission["call_id"])
            records.append(
                {
                    "event": RESULT_EVENTS[admission["event"]],
                    "gateway": INSTANCE,
                    "call_id": admission["call_id"],
                    "outcome": "ok",
                }
            )
        elif step[0] == "started":
            records.append({"event": "gateway.started", "gateway": INSTANCE})
            since_start = []
        elif step[0] == "foreign":
            records.append({"event": "tool.call", "gateway": "gw-2", "decision": "allow", "call_id": "other"})
        elif step[0] == "noise":
            records.append(None)
    return records, [c for c in since_start if c not in closed]


def write(path: Path, records: list[dict[str, Any] | None], cuts: list[int]) -> None:
    """The records in seq order, split into rotated files at `cuts` (the last part is the active file)."""
    lines = ["{not json" if r is None else json.dumps({**r, "seq": i + 1}) for i, r in enumerate(records)]
    bounds = [0, *sorted({min(c, len(lines)) for c in cuts}), len(lines)]
    for start, end in zip(bounds, bounds[1:-1], strict=False):
        if end > start:
            rotated_path(path, end).write_text("".join(line + "\n" for line in lines[start:end]))
    path.write_text("".join(line + "\n" for line in lines[bounds[-2] :]))


@settings(max_examples=150, deadline=None)
@given(STEPS, st.lists(st.integers(0, 40), max_size=3))
def test_the_scan_finds_exactly_the_allows_since_the_last_start_that_have_no_outcome(steps, cuts):
    records, expected = stream(steps)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audit.jsonl"
        write(path, records, cuts)
        found = open_admissions(GatewaySink(path, INSTANCE))
    assert [r["call_id"] for r in found] == expected


def test_the_scan_stops_after_its_bound(tmp_path: Path):
    records, expected = stream([("admit", "tool.call", "allow")] * 5)
    write(tmp_path / "audit.jsonl", records, [])
    assert [r["call_id"] for r in open_admissions(GatewaySink(tmp_path / "audit.jsonl", INSTANCE), limit=2)] == [
        "c3",
        "c4",
    ]
    assert len(expected) == 5


@pytest.mark.anyio
async def test_each_open_admission_gets_one_interrupted_outcome_with_its_identity(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    audit = GatewaySink(path, INSTANCE)
    async with audit.run():
        await audit.emit("gateway.started")
        await audit.emit(
            "prompt.get",
            durable=True,
            decision="allow",
            call_id="p1",
            agent="a",
            session="s1",
            server="everything",
            prompt="everything__simple-prompt",
            request_tokens=4,
            reason="granted",
        )
        assert await close_interrupted(audit) == 1
        assert await close_interrupted(audit) == 0  # nothing is closed twice
    [outcome] = [json.loads(line) for line in path.read_text().splitlines() if '"prompt.result"' in line]
    assert {
        k: outcome[k] for k in ("call_id", "agent", "session", "server", "prompt", "outcome", "request_tokens")
    } == {
        "call_id": "p1",
        "agent": "a",
        "session": "s1",
        "server": "everything",
        "prompt": "everything__simple-prompt",
        "outcome": "interrupted",
        "request_tokens": 4,
    }
    assert "decision" not in outcome and "reason" not in outcome
