"""Rows <-> records, shared by the SQL backends: both keep JSON as text and times as epoch seconds."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields, replace
from typing import Any, Protocol

from gateway.store.base import AgentRecord, SessionRecord

SESSION_COLUMNS = [f.name for f in fields(SessionRecord)]
# The session columns in SessionRecord's field order: a statement that selects (or returns) exactly these
# gives a row `session_of` reads by position, sparing a lookup by name per column (sqlite3.Row scans its
# column names for each one, and a session is read on every request).
SESSION_SELECT = ", ".join(SESSION_COLUMNS)
_STOP = SESSION_COLUMNS.index("stop")
AGENT_COLUMNS = {  # the agent fields `update_agent` may change, and their columns
    "owner": "owner",
    "cost_center": "cost_center",
    "disabled": "disabled",
    "secret_hash": "secret_hash",
    "jwks": "jwks",
    "grant": "grant_spec",
    "secret_at": "secret_at",
    "last_used": "last_used",
    "lifecycle": "lifecycle",
}
_JSON_FIELDS = ("jwks", "grant", "lifecycle")


class Row(Protocol):
    """A row read by column name: a dict, sqlite3.Row or asyncpg.Record."""

    def __getitem__(self, key: str, /) -> Any: ...


def new_agent(agent: AgentRecord) -> tuple[Any, ...]:
    """`create_agent`'s row values, in its INSERT's column order (both backends; SQLite stores the bool as 0 or 1)."""
    return (
        agent.id,
        agent.owner,
        agent.cost_center,
        agent.source,
        agent.disabled,
        agent.created_at,
        agent.secret_hash,
        dump(agent.jwks),
        dump(agent.grant),
        dump(agent.workload),
        agent.secret_at,
        agent.keys_at,
        dump(agent.lifecycle),
    )


def config_agent(agent: AgentRecord, now: float) -> tuple[Any, ...]:
    """`sync_config_agents`' row values for an agents.yaml agent: id, owner, cost center, created, jwks, grant,
    workload, keys_at (when its keys were set: now, if it has any)."""
    return (
        agent.id,
        agent.owner,
        agent.cost_center,
        now,
        dump(agent.jwks),
        dump(agent.grant),
        dump(agent.workload),
        now if agent.jwks is not None else None,
    )


def workload_key(issuer: str, subject: str) -> str:
    """The `workload` column's value for this platform identity (unique across agents)."""
    return dump({"issuer": issuer, "subject": subject}) or ""


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def load(text: str | None) -> Any:
    return json.loads(text) if text else None


def agent(row: Row) -> AgentRecord:
    return AgentRecord(
        id=row["id"],
        owner=row["owner"],
        cost_center=row["cost_center"],
        source=row["source"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        secret_hash=row["secret_hash"],
        jwks=load(row["jwks"]),
        grant=load(row["grant_spec"]),
        workload=load(row["workload"]),
        secret_at=row["secret_at"],
        keys_at=row["keys_at"],
        last_used=row["last_used"],
        lifecycle=load(row["lifecycle"]),
    )


def agent_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """`update_agent`'s changes as column values.

    Raises:
        ValueError: a field that is not in AGENT_COLUMNS.
    """
    unknown = sorted(set(changes) - AGENT_COLUMNS.keys())
    if unknown:
        raise ValueError(f"agent fields that cannot be updated: {', '.join(unknown)}")
    return {AGENT_COLUMNS[k]: dump(v) if k in _JSON_FIELDS else v for k, v in changes.items()}


def session_values(session: SessionRecord) -> dict[str, Any]:
    """The session as column values, in SESSION_COLUMNS order."""
    values = asdict(session)
    values["stop"] = dump(values["stop"])
    return values


def session(row: Row) -> SessionRecord:
    values = {name: row[name] for name in SESSION_COLUMNS}
    values["stop"] = load(values["stop"])
    return SessionRecord(**values)


def session_of(row: Iterable[Any]) -> SessionRecord:
    """A session from a row of SESSION_SELECT's columns, in that order."""
    values = list(row)
    values[_STOP] = load(values[_STOP])
    return SessionRecord(*values)


def as_of(record: SessionRecord, now: float) -> SessionRecord:
    """The session as it really is at `now`: a lazily-expired one reported as expired."""
    ended = record.ended_state(now)
    if ended is None or ended == record.state:
        return record
    return replace(record, state=ended, reason=ended)


def state_at(now: str) -> str:
    """SQL for the state `as_of` reports at the time bound to the placeholder `now` (NULL: the stored state)."""
    return (
        "CASE WHEN state IN ('active', 'suspended') "
        f"AND (expires_at <= {now} OR last_seen + idle_timeout <= {now}) THEN 'expired' ELSE state END"
    )


def listed(found: Iterable[Row], now: float | None) -> list[SessionRecord]:
    """`list_sessions`' rows as records; with `now`, lazily-expired ones reported as expired."""
    sessions = [session(r) for r in found]
    return sessions if now is None else [as_of(s, now) for s in sessions]
