"""`interactive:` templates: each (human, client) pair that signs in becomes its own agent.

The agent is `<template>:<human>:<client host>` (a document's host, a registration's id), owned by
the human, kind `interactive`, created at the first sign-in and then used like any agent: listed by
`agents list`, disabled and revoked like any other. Its grant is its template's, read afresh (a
template removed from agents.yaml disables its agents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.audit.events import Event
from gateway.config.files import InteractiveTemplate, glob_matches
from gateway.identity.agents import Agent
from gateway.identity.delegation import may_delegate
from gateway.identity.idp import Human
from gateway.login.clients import Client
from gateway.store.base import AgentRecord

if TYPE_CHECKING:
    from gateway.login.deps import LoginDeps


class NotAllowed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def template_for(templates: dict[str, InteractiveTemplate], client_id: str) -> tuple[str, InteractiveTemplate]:
    """The first template (in agents.yaml order) whose `clients` admit this client.

    Raises:
        NotAllowed: none does.
    """
    for name, template in templates.items():
        if any(glob_matches(pattern, client_id) for pattern in template.clients):
            return name, template
    raise NotAllowed("no interactive template in agents.yaml admits this client")


def agent_id_for(template: str, human: Human, client: Client) -> str:
    return f"{template}:{human.principal}:{client.host}"


async def agent_for(deps: LoginDeps, name: str, template: InteractiveTemplate, human: Human, client: Client) -> Agent:
    """The pair's agent, created at its first sign-in.

    Raises:
        NotAllowed: the human is not among the template's `users`, or the agent is disabled.
        StoreUnavailable: the store cannot be consulted.
    """
    if not may_delegate(template.users, human):
        raise NotAllowed("this person is not among the template's users")
    agent_id = agent_id_for(name, human, client)
    if await deps.store.get_agent(agent_id) is None:
        owner = human.principal
        record = AgentRecord(
            id=agent_id, owner=owner, cost_center=template.cost_center, source="interactive", created_at=deps.clock()
        )
        if await deps.store.create_agent(record):
            await deps.audit.emit(
                Event.AGENT_CREATED,
                durable=True,
                agent=agent_id,
                owner=owner,
                kind="interactive",
                template=name,
                client_id=client.id,
                actor=f"login:{owner}",
            )
    agent = await deps.agents.get(agent_id, fresh=True)
    if agent is None or agent.disabled:
        raise NotAllowed("this agent is disabled; an operator can enable it with mcp-gateway agents enable")
    return agent
