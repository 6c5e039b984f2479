"""Workload identity federation (RFC 7523 jwt-bearer grant, MCP SEP-1933): platform JWTs instead of secrets.

An agent running on a platform (a Kubernetes service account token, a SPIFFE
JWT-SVID) presents the JWT its platform issued as the `assertion` of the
jwt-bearer grant. It is verified against the issuer's published keys (fetched
and cached exactly like identity providers' keys), with the algorithm list of
the issuer's configuration, never the token's `alg`; `aud` must contain the
configured audience and `exp` is required. `(iss, sub)` names exactly one
agent (agents.yaml `workload`). A `jti`, when the token has one, is single-use:
the store remembers it until the token expires, so a copied assertion cannot
open a second session on any replica. The session's lifetime is its own: the
assertion's `exp` only bounds the assertion.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config.files import WorkloadIssuer
from gateway.errors import AuthError
from gateway.identity.agents import Agent, AgentDirectory
from gateway.identity.idp import ID_JAG_TYPE, INVALID, JwtIssuers
from gateway.store.base import Store


class WorkloadIssuers(JwtIssuers):
    """The agent a workload JWT stands for."""

    def __init__(
        self, issuers: tuple[WorkloadIssuer, ...], agents: AgentDirectory, store: Store, clock: Callable[[], float]
    ) -> None:
        super().__init__(issuers, clock)
        self.agents = agents
        self.store = store

    async def agent_for(self, assertion: str) -> Agent:
        """The enabled agent whose `workload` is this JWT's issuer and subject.

        Raises:
            AuthError: (`invalid_grant`) the JWT does not verify, names no agent or a disabled one, or is replayed.
            Unavailable: the issuer's keys or the store cannot be consulted.
        """
        issuer, header, claims = await self.verified(
            assertion, what="workload JWT", require=("iss", "sub", "aud", "exp")
        )
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower().removeprefix("application/") == ID_JAG_TYPE:
            # one issuer may sign both: a person's grant must never pass for a workload's identity
            raise AuthError("an ID-JAG needs the agent to authenticate as the client", error=INVALID)
        agent_id = await self.agents.by_workload(issuer.issuer, claims["sub"])
        if agent_id is None:
            raise AuthError("workload subject is not mapped to an agent", error=INVALID)
        agent = await self.agents.get(agent_id, fresh=True)
        if agent is None or agent.disabled:
            raise AuthError("workload subject maps to a disabled agent", error=INVALID)
        jti = claims.get("jti")
        if jti is not None:
            if not isinstance(jti, str) or not jti:
                raise AuthError("workload JWT jti malformed", error=INVALID)
            if not await self.store.remember_jti(f"workload|{issuer.issuer}|{jti}", float(claims["exp"]), self.clock()):
                raise AuthError("workload JWT replayed (jti already used)", error=INVALID)
        return agent
