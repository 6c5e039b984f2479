"""Rows <-> records, shared by the SQL backends: both keep JSON as text and times as epoch seconds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from gateway.store.base import AgentRecord, SessionRecord

SESSION_COLUMNS = [f.name for f in fields(SessionRecord)]


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def agent(row: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        id=row["id"],
        owner=row["owner"],
        cost_center=row["cost_center"],
        source=row["source"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        secret_hash=row["secret_hash"],
        jwks=json.loads(row["jwks"]) if row["jwks"] else None,
        grant=json.loads(row["grant_spec"]) if row["grant_spec"] else None,
    )


def session_values(session: SessionRecord) -> dict[str, Any]:
    """The session as column values, in SESSION_COLUMNS order."""
    values = asdict(session)
    values["stop"] = dump(values["stop"])
    return values


def session(row: Mapping[str, Any]) -> SessionRecord:
    values = {name: row[name] for name in SESSION_COLUMNS}
    values["stop"] = json.loads(values["stop"]) if values["stop"] else None
    return SessionRecord(**values)


def as_of(record: SessionRecord, now: float) -> SessionRecord:
    """The session as it really is at `now`: a lazily-expired one reported as expired."""
    ended = record.ended_state(now)
    if ended is None or ended == record.state:
        return record
    return SessionRecord(**{**asdict(record), "state": ended, "reason": ended})
