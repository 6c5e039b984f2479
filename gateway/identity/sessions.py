"""Sessions: a task's lifetime, from open to closed, expired or revoked.

A session is a row in the store; its token only points at it. Opening one
clamps the requested lifetime to the grant, counts the agent's live sessions
against `max_active_sessions` atomically, and writes `session.opened` and
`token.issued`. Every authenticated request re-reads the row, so a close,
expiry or revocation stops the very next request wherever it was made.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.config.files import SessionDefaults
from gateway.errors import AuthError
from gateway.identity.agents import Agent, AgentDirectory
from gateway.identity.principal import Principal
from gateway.identity.tokens import TokenClaims, Tokens
from gateway.store.base import ENDED_STATES, SessionRecord, SessionState, SessionStore

_TOUCH_EVERY = 1.0  # seconds between idle-timeout writes for one session

EndListener = Callable[[str], Awaitable[None]]


class Sessions:
    def __init__(
        self,
        store: SessionStore,
        agents: AgentDirectory,
        tokens: Tokens,
        audit: Audit,
        defaults: SessionDefaults,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.agents = agents
        self.tokens = tokens
        self.audit = audit
        self.defaults = defaults
        self.clock = clock
        self._listeners: list[EndListener] = []

    def on_end(self, listener: EndListener) -> None:
        """Call `listener(sid)` whenever this process learns a session ended."""
        self._listeners.append(listener)

    def lifetime(self, agent: Agent) -> tuple[float, float]:
        """(max lifetime, idle timeout) for a new session of `agent`."""
        budget = agent.grant.budget
        return budget.session_ttl or self.defaults.ttl, budget.idle_timeout or self.defaults.idle_timeout

    async def open(
        self,
        agent_id: str,
        *,
        on_behalf_of: str | None = None,
        task: str | None = None,
        ttl: float | None = None,
        via: str,
        remote_addr: str | None = None,
        credential: str | None = None,
        jkt: str | None = None,
        token_ttl: float | None = None,
    ) -> tuple[SessionRecord, str]:
        """Open a session for an agent and sign its token (bound to the DPoP key `jkt`, if given).

        `token_ttl`: the token lives at most this long (a sign-in's short access tokens, renewed with refresh
        tokens); by default it lives as long as the session.

        `credential` is what the agent proved itself with (one of `tokens.CREDENTIALS`: secret, private_key_jwt,
        workload, id_jag; `operator` for a token an operator mints): the token carries it, so every record its
        requests cause says it.

        Raises:
            AuthError: the agent is unknown or disabled (`invalid_client`), or has
                `max_active_sessions` live sessions already (`access_denied`).
        """
        agent = await self.agents.get(agent_id, fresh=True)
        if agent is None or agent.disabled:
            raise AuthError(f"agent {agent_id!r} is unknown or disabled", error="invalid_client")
        now = self.clock()
        max_lifetime, idle = self.lifetime(agent)
        lifetime = min(ttl, max_lifetime) if ttl else max_lifetime
        budget = agent.grant.budget
        session = SessionRecord(
            sid=f"s-{secrets.token_urlsafe(18)}",
            agent=agent.id,
            owner=agent.owner,
            cost_center=agent.cost_center,
            on_behalf_of=on_behalf_of,
            task=task,
            grant_version=agent.grant.version,
            state="active",
            created_at=now,
            expires_at=now + lifetime,
            max_expires_at=now + max_lifetime,
            idle_timeout=idle,
            last_seen=now,
            calls_limit=budget.session_calls,
            tokens_limit=budget.session_tokens,
        )
        if not await self.store.create_session(session, budget.max_active_sessions):
            raise AuthError(
                f"agent {agent.id!r} already has {budget.max_active_sessions} active sessions "
                "(max_active_sessions); close one first",
                error="access_denied",
            )
        identity = _identity(agent, session)
        await self.audit.emit(
            Event.SESSION_OPENED,
            durable=True,
            **identity,
            expires_at=session.expires_at,
            via=via,
            remote_addr=remote_addr,
        )
        return session, await self._issue(agent, session, via, remote_addr, credential, jkt, token_ttl)

    async def _issue(
        self,
        agent: Agent,
        session: SessionRecord,
        via: str,
        remote_addr: str | None,
        credential: str | None,
        jkt: str | None,
        token_ttl: float | None = None,
    ) -> str:
        expires_at = session.expires_at
        if token_ttl is not None:
            expires_at = min(expires_at, self.clock() + token_ttl)
        token, jti = self.tokens.issue(
            sid=session.sid,
            agent=agent.id,
            subject=session.on_behalf_of,
            expires_at=expires_at,
            task=session.task,
            grant=agent.grant.version,
            jkt=jkt,
            credential=credential,
        )
        bound = {"dpop_jkt": jkt} if jkt is not None else {}
        await self.audit.emit(
            Event.TOKEN_ISSUED,
            durable=True,
            **_identity(agent, session),
            jti=jti,
            expires_at=expires_at,
            via=via,
            remote_addr=remote_addr,
            credential=credential,
            **bound,
        )
        return token

    async def renew(
        self,
        sid: str,
        agent_id: str,
        ttl: float | None,
        *,
        via: str,
        remote_addr: str | None = None,
        credential: str | None = None,
        jkt: str | None = None,
    ) -> tuple[SessionRecord, str]:
        """Extend a live session of this agent, within its max lifetime; same sid, same budget.

        Raises:
            AuthError: the session is not a live session of this agent.
        """
        agent = await self.agents.get(agent_id, fresh=True)
        current = await self.store.get_session(sid)
        if agent is None or agent.disabled or current is None or current.agent != agent_id:
            raise AuthError("no such session for this client", error="invalid_grant")
        now = self.clock()
        max_lifetime, _ = self.lifetime(agent)
        lifetime = min(ttl, max_lifetime) if ttl else max_lifetime
        renewed = await self.store.renew_session(sid, now + lifetime, now)
        if renewed is None:
            raise AuthError("the session has ended and cannot be renewed", error="invalid_grant")
        return renewed, await self._issue(agent, renewed, via, remote_addr, credential, jkt)

    async def reissue(
        self,
        sid: str,
        agent_id: str,
        *,
        via: str,
        token_ttl: float,
        remote_addr: str | None = None,
        credential: str | None = None,
    ) -> tuple[SessionRecord, str]:
        """A new short token for a live session of this agent (a refresh): the session's lifetime is unchanged,
        the refresh counts as activity.

        Raises:
            AuthError: (`invalid_grant`) the session is not a live session of this agent, or the agent is disabled.
        """
        agent = await self.agents.get(agent_id, fresh=True)
        current = await self.store.get_session(sid)
        if agent is None or agent.disabled or current is None or current.agent != agent_id:
            raise AuthError("no such session for this client", error="invalid_grant")
        renewed = await self.store.renew_session(sid, current.expires_at, self.clock())
        if renewed is None:
            raise AuthError("the session has ended: sign in again", error="invalid_grant")
        return renewed, await self._issue(agent, renewed, via, remote_addr, credential, None, token_ttl)

    async def authenticate(
        self, token: str, *, remote_addr: str | None = None, claims: TokenClaims | None = None
    ) -> Principal:
        """The principal a bearer token stands for, checked against the live session; counts as activity.

        `claims`: the token's, when the caller has just verified it (the edge does, for DPoP).

        Raises:
            AuthError: invalid token, unknown session, ended session, disabled agent.
            StoreUnavailable: the store cannot be consulted (the caller refuses).
        """
        principal = await self.resolve(token, remote_addr=remote_addr, claims=claims)
        now = self.clock()
        if now - principal.session.last_seen >= _TOUCH_EVERY:
            await self.store.touch_session(principal.sid, now)
        return principal

    async def resolve(
        self, token: str, *, remote_addr: str | None = None, claims: TokenClaims | None = None
    ) -> Principal:
        """Like `authenticate`, without recording activity (introspection, revocation).

        Raises:
            AuthError, StoreUnavailable: as for `authenticate`.
        """
        if claims is None:
            claims = self.tokens.verify(token)
        session = await self.store.get_session(claims.sid)
        if session is None or session.agent != claims.agent or session.grant_version is None:
            raise AuthError("token does not belong to a session of its agent")
        if (session.on_behalf_of or session.agent) != claims.subject:
            raise AuthError("token subject does not match its session")
        now = self.clock()
        ended = session.ended_state(now)
        if ended is not None:
            if session.state not in ENDED_STATES:
                await self.end(session.sid, "expired", "expired")
            raise AuthError(f"session {ended}")
        agent = await self.agents.get(claims.agent)
        if agent is None or agent.disabled:
            raise AuthError("agent is disabled")
        return Principal(agent=agent, session=session, token=claims, remote_addr=remote_addr)

    async def end(self, sid: str, state: SessionState, reason: str, *, actor: str | None = None) -> bool:
        """Close, expire or revoke one session; False if it was not live."""
        ended = await self.store.end_session(sid, state, reason, self.clock())
        if ended is None:
            return False
        await self._ended(ended, actor)
        return True

    async def end_agent(self, agent_id: str, reason: str, *, actor: str | None = None) -> list[str]:
        """Revoke every live session of an agent."""
        sids = await self.store.end_agent_sessions(agent_id, "revoked", reason, self.clock())
        for sid in sids:
            session = await self.store.get_session(sid)
            if session is not None:
                await self._ended(session, actor)
        return sids

    async def sweep(self) -> list[str]:
        """Mark sessions past expiry or idle timeout as expired (run periodically)."""
        expired = await self.store.expire_sessions(self.clock())
        for session in expired:
            await self._ended(session, None)
        return [s.sid for s in expired]

    async def _ended(self, session: SessionRecord, actor: str | None) -> None:
        await self.audit.emit(
            Event.SESSION_CLOSED,
            durable=True,
            agent=session.agent,
            owner=session.owner,
            on_behalf_of=session.on_behalf_of,
            session=session.sid,
            task=session.task,
            grant=session.grant_version,
            state=session.state,
            reason=session.reason,
            actor=actor,
            calls=session.calls,
            tokens=session.tokens,
        )
        await self.notify_ended(session.sid)

    async def notify_ended(self, sid: str) -> None:
        for listener in self._listeners:
            await listener(sid)


def _identity(agent: Agent, session: SessionRecord) -> dict[str, Any]:
    return {
        "agent": agent.id,
        "owner": agent.owner,
        "cost_center": agent.cost_center,
        "on_behalf_of": session.on_behalf_of,
        "session": session.sid,
        "task": session.task,
        "grant": agent.grant.version,
    }
