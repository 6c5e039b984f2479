"""The identity triple every request carries once authenticated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.identity.agents import Agent
from gateway.identity.policy import Grant
from gateway.identity.tokens import TokenClaims
from gateway.store.base import SessionRecord

PRINCIPAL = "gateway.principal"  # the ASGI scope key under which the edge hands the principal to the MCP servers


@dataclass(slots=True)  # built on every request: a frozen dataclass pays a setattr per field
class Principal:
    """Who acted (agent), for whom (on_behalf_of), in which task (session)."""

    agent: Agent
    session: SessionRecord
    token: TokenClaims
    remote_addr: str | None = None

    @property
    def sid(self) -> str:
        return self.session.sid

    @property
    def grant(self) -> Grant:
        return self.agent.grant

    def audit_fields(self) -> dict[str, Any]:
        """The identity fields of every audit record this request causes."""
        return {
            "agent": self.agent.id,
            "owner": self.agent.owner,
            "cost_center": self.agent.cost_center,
            "on_behalf_of": self.session.on_behalf_of,
            "session": self.session.sid,
            "task": self.session.task,
            "grant": self.agent.grant.version,
            "remote_addr": self.remote_addr,
            "credential": self.token.credential,  # how the agent got this token: from the token, never re-derived
            "dpop_jkt": self.token.jkt,  # the key the token is bound to (absent from the record when unbound)
        }
