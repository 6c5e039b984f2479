"""The agent directory: agents.yaml (authoritative for what it defines) plus CLI-created agents."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.files import AgentSpec, DpopMode, GrantSpec, InteractiveTemplate, Workload
from gateway.identity.policy import EMPTY_GRANT, Grant, compile_grant
from gateway.store.base import AgentRecord, AgentStore

_STORE_AGENT_TTL = 1.0  # seconds a store agent's definition is reused before re-reading


@dataclass(frozen=True)
class Agent:
    id: str
    owner: str
    cost_center: str | None
    source: str  # "config" | "store" | "interactive" (created by a sign-in, from an `interactive:` template)
    disabled: bool
    grant: Grant
    delegators: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    secret_hash: str | None = None
    workload: Workload | None = None  # authenticates with its platform's JWT (agents.yaml only)
    dpop: DpopMode | None = None  # overrides gateway.yaml `dpop`
    created_at: float = 0.0
    secret_at: float | None = None  # when its secret was set
    keys_at: float | None = None  # when its registered key set was set or changed
    last_used: float | None = None  # its last token issued
    lifecycle: Mapping[str, float | None] = field(default_factory=dict)  # its own; gateway defaults fill the rest


def _from_spec(agent_id: str, spec: AgentSpec, record: AgentRecord | None) -> Agent:
    return Agent(
        id=agent_id,
        owner=spec.owner,
        cost_center=spec.cost_center,
        source="config",
        disabled=spec.disabled or bool(record and record.disabled),
        grant=compile_grant(spec.grant),
        delegators=spec.delegators,
        jwks=spec.jwks,
        secret_hash=record.secret_hash if record else None,
        workload=spec.workload,
        dpop=spec.dpop,
        lifecycle=spec.lifecycle(),
        **_times(record),
    )


def _times(record: AgentRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {
        "created_at": record.created_at,
        "secret_at": record.secret_at,
        "keys_at": record.keys_at,
        "last_used": record.last_used,
    }


def template_of(agent_id: str) -> str:
    """The `interactive:` template an interactive agent (`<template>:<human>:<client host>`) was made from."""
    return agent_id.partition(":")[0]


def _from_record(record: AgentRecord, templates: Mapping[str, InteractiveTemplate] | None = None) -> Agent:
    disabled = record.disabled
    if record.source == "interactive":  # the template's current grant; a template removed disables its agents
        template = (templates or {}).get(template_of(record.id))
        grant = compile_grant(template.grant) if template is not None else EMPTY_GRANT
        disabled = disabled or template is None
    else:
        grant = compile_grant(GrantSpec.model_validate(record.grant)) if record.grant else EMPTY_GRANT
    return Agent(
        id=record.id,
        owner=record.owner,
        cost_center=record.cost_center,
        source=record.source,
        disabled=disabled,
        grant=grant,
        jwks=record.jwks,
        secret_hash=record.secret_hash,
        workload=Workload.model_validate(record.workload) if record.workload else None,
        lifecycle=record.lifecycle or {},
        **_times(record),
    )


def resolve(
    record: AgentRecord, specs: Mapping[str, AgentSpec], templates: Mapping[str, InteractiveTemplate] | None = None
) -> Agent:
    """The agent a store row describes, with its agents.yaml definition (if any) laid over it."""
    spec = specs.get(record.id)
    return _from_spec(record.id, spec, record) if spec is not None else _from_record(record, templates)


class AgentDirectory:
    """Looks agents up by id. Config definitions win; credentials and the disabled flag live in the store."""

    def __init__(
        self, store: AgentStore, specs: dict[str, AgentSpec], templates: dict[str, InteractiveTemplate] | None = None
    ) -> None:
        self.store = store
        self.specs = specs
        self.templates = templates or {}  # agents.yaml `interactive:`: the grants of sign-in agents
        self._cache: dict[str, tuple[float, Agent | None]] = {}
        self._workloads = {
            (spec.workload.issuer, spec.workload.subject): agent_id
            for agent_id, spec in specs.items()
            if spec.workload is not None
        }

    async def by_workload(self, issuer: str, subject: str) -> str | None:
        """The id of the agent whose `workload` is this issuer and subject: agents.yaml's first (unique there,
        checked at load), else a store agent's (unique there, by index).

        Raises:
            StoreUnavailable: the store cannot be consulted.
        """
        agent_id = self._workloads.get((issuer, subject))
        if agent_id is not None:
            return agent_id
        record = await self.store.agent_for_workload(issuer, subject)
        return record.id if record is not None and record.id not in self.specs else None

    async def sync(self, now: float) -> None:
        """Write agents.yaml's agents into the store so every process and replica sees them."""
        records = {
            agent_id: AgentRecord(
                id=agent_id,
                owner=spec.owner,
                cost_center=spec.cost_center,
                source="config",
                disabled=spec.disabled,
                created_at=now,
                jwks=spec.jwks,
                grant=spec.grant.model_dump(mode="json"),
            )
            for agent_id, spec in self.specs.items()
        }
        await self.store.sync_config_agents(records, now)

    async def get(self, agent_id: str, *, fresh: bool = False) -> Agent | None:
        """The agent, or None. Store reads are reused for a second unless `fresh`."""
        now = time.monotonic()
        cached = self._cache.get(agent_id)
        if cached is not None and not fresh and now - cached[0] < _STORE_AGENT_TTL:
            return cached[1]
        record = await self.store.get_agent(agent_id)
        spec = self.specs.get(agent_id)
        if spec is not None:
            agent: Agent | None = _from_spec(agent_id, spec, record)
        else:
            agent = _from_record(record, self.templates) if record is not None else None
        self._cache[agent_id] = (now, agent)
        if len(self._cache) > 10_000:
            self._cache.clear()
        return agent

    def resolve(self, record: AgentRecord) -> Agent:
        """The agent a store row describes, agents.yaml's definition laid over it (no further read)."""
        return resolve(record, self.specs, self.templates)

    def forget(self, agent_id: str) -> None:
        self._cache.pop(agent_id, None)

    def forget_all(self) -> None:
        """agents.yaml was reloaded: every agent is read afresh at its next use."""
        self._cache.clear()
