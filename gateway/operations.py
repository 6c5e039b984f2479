"""Operator actions on agents and sessions, shared by the CLI and the admin API.

Each action is itself audited, with the operator as `actor` ("cli:<user>" or
"admin"). Agents defined in agents.yaml are authoritative there: they can be
disabled, enabled and given a secret, but not created or granted here. An agent
with a `workload` identity never gets a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.audit.events import Event
from gateway.config.files import AGENT_ID, EMAIL, AgentSpec, GrantSpec, Workload, check_public_jwks, parse_grant
from gateway.errors import ConfigError, OperatorError
from gateway.identity.agents import resolve
from gateway.identity.credentials import generate_secret, hash_secret
from gateway.identity.lifecycle import credential_of, credential_set_at, iso, own_settings, policy
from gateway.identity.policy import compile_grant
from gateway.store.base import AgentRecord, SessionRecord, SessionState

if TYPE_CHECKING:
    from gateway.audit import Audit
    from gateway.config.live import LiveConfig
    from gateway.identity.agents import AgentDirectory
    from gateway.identity.sessions import Sessions
    from gateway.store import Store


class Operations:
    """One operator's actions; app.py builds it for each actor (the CLI user, the admin API, a console operator)."""

    def __init__(
        self,
        actor: str,
        *,
        live: LiveConfig,
        store: Store,
        audit: Audit,
        agents: AgentDirectory,
        sessions: Sessions,
        credential_key: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.actor = actor
        self.live = live  # `agent_defaults` reloads
        self.store = store
        self.audit = audit
        self.agents = agents
        self.sessions = sessions
        self.credential_key = credential_key
        self.clock = clock

    async def _audit(self, event: Event, **fields: Any) -> None:
        await self.audit.emit(event, durable=True, actor=self.actor, **fields)

    # ------------------------------------------------------------ agents

    async def list_agents(self) -> list[dict[str, Any]]:
        """Every agent in the store (agents.yaml's are synced there); agents.yaml may also disable one."""
        return agent_rows(await self.store.list_agents(), self.agents.specs)

    async def create_agent(
        self,
        agent_id: str,
        owner: str,
        cost_center: str | None = None,
        jwks: dict[str, Any] | None = None,
        workload: dict[str, Any] | None = None,
        lifecycle: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Create a store agent; returns its secret (shown once), or None when it authenticates with `jwks` or
        its platform's JWT (`workload`: {issuer, subject}). `lifecycle`: its own expires, disable_after_idle and
        credential_max_age (as agents.yaml's), over gateway.yaml `agent_defaults`.

        Raises:
            OperatorError: a bad id, owner, key set or workload; the id or the workload is taken.
        """
        if not isinstance(agent_id, str) or not AGENT_ID.fullmatch(agent_id):
            raise OperatorError(f"agent id must match {AGENT_ID.pattern}")
        if not isinstance(owner, str) or not EMAIL.fullmatch(owner):
            raise OperatorError("owner must be an email address")
        if cost_center is not None and not isinstance(cost_center, str):
            raise OperatorError("cost_center must be a string")
        if jwks is not None:
            try:
                check_public_jwks(jwks)
            except ValueError as exc:
                raise OperatorError(f"jwks: {exc}") from None
        try:
            own = own_settings(lifecycle) if lifecycle else None
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        if agent_id in self.agents.specs:
            raise OperatorError(f"agent {agent_id!r} is defined in agents.yaml; edit it there", status=409)
        if workload is not None:
            workload = await self._free_workload(workload, jwks)
        credential = "workload" if workload else "private_key_jwt" if jwks is not None else "secret"
        secret = generate_secret() if credential == "secret" else None
        now = self.clock()
        record = AgentRecord(
            id=agent_id,
            owner=owner,
            cost_center=cost_center,
            source="store",
            created_at=now,
            secret_hash=hash_secret(self.credential_key, secret) if secret else None,
            jwks=jwks,
            workload=workload,
            secret_at=now if secret else None,
            keys_at=now if jwks is not None else None,
            lifecycle=own,
        )
        if not await self.store.create_agent(record):
            raise OperatorError(f"agent {agent_id!r} (or its workload identity) already exists", status=409)
        await self._audit(
            Event.AGENT_CREATED,
            agent=agent_id,
            owner=owner,
            cost_center=cost_center,
            credential=credential,
            workload=workload,
            lifecycle=own,
        )
        return secret

    async def _free_workload(self, workload: Any, jwks: Any) -> dict[str, str]:
        """A valid, configured `{issuer, subject}` no other agent has.

        Raises:
            OperatorError: malformed, an issuer not in gateway.yaml `workload_issuers`, or taken.
        """
        if jwks is not None:
            raise OperatorError("an agent authenticates with jwks or a workload identity, not both")
        try:
            parsed = Workload.model_validate(workload)
        except ValidationError as exc:
            raise OperatorError(f"workload: {exc.errors()[0]['msg']} ({{issuer, subject}} required)") from None
        if parsed.issuer not in {entry.issuer for entry in self.live.current.workload_issuers}:
            raise OperatorError(f"workload issuer {parsed.issuer!r} is not in gateway.yaml workload_issuers")
        owner = await self.agents.by_workload(parsed.issuer, parsed.subject)
        if owner is not None:
            raise OperatorError(f"agent {owner!r} already has this workload identity", status=409)
        return {"issuer": parsed.issuer, "subject": parsed.subject}

    async def _known(self, agent_id: str) -> None:
        if await self.store.get_agent(agent_id) is None:
            raise OperatorError(f"no agent {agent_id!r}", status=404)

    async def _update_agent(self, agent_id: str, **changes: Any) -> None:
        if not await self.store.update_agent(agent_id, **changes):
            raise OperatorError(f"no agent {agent_id!r}", status=404)
        self.agents.forget(agent_id)

    async def disable_agent(self, agent_id: str) -> list[str]:
        """Disable an agent and revoke its live sessions; returns their ids."""
        await self._update_agent(agent_id, disabled=True)
        await self._audit(Event.AGENT_DISABLED, agent=agent_id)
        return await self.sessions.end_agent(agent_id, "revoked", actor=self.actor)

    async def enable_agent(self, agent_id: str) -> None:
        # Enabling counts as use: an idle-disabled agent gets a full disable_after_idle before the next sweep.
        await self._update_agent(agent_id, disabled=False, last_used=self.clock())
        await self._audit(Event.AGENT_ENABLED, agent=agent_id)

    async def rotate_secret(self, agent_id: str) -> str:
        """A new secret for the agent (the old one stops working); returned once.

        Raises:
            OperatorError: no such agent, or it authenticates with its platform's JWT (agents.yaml `workload`).
        """
        agent = await self.agents.get(agent_id, fresh=True)
        if agent is not None and agent.workload is not None:
            raise OperatorError(
                f"agent {agent_id!r} authenticates with its workload identity; it has no secret", status=409
            )
        if agent is not None and agent.source == "interactive":  # its human signs in; a secret would bypass that
            raise OperatorError(
                f"agent {agent_id!r} is a sign-in's agent; its human signs in, it has no secret", status=409
            )
        secret = generate_secret()
        await self._update_agent(
            agent_id, secret_hash=hash_secret(self.credential_key, secret), secret_at=self.clock()
        )  # credential_max_age counts from here
        await self._audit(Event.AGENT_SECRET_ROTATED, agent=agent_id)
        return secret

    async def show_agent(self, agent_id: str) -> dict[str, Any]:
        """One agent with its grant (agents.yaml's for its agents, the store's for the others).

        Raises:
            OperatorError: no such agent.
        """
        record = await self.store.get_agent(agent_id)
        spec = self.agents.specs.get(agent_id)
        if spec is not None:
            owner, cost_center, grant, jwks = spec.owner, spec.cost_center, spec.grant, spec.jwks
        elif record is not None:
            owner, cost_center, jwks = record.owner, record.cost_center, record.jwks
            grant = parse_grant(record.grant, f"agent {agent_id}: stored grant")
        else:
            raise OperatorError(f"no agent {agent_id!r}", status=404)
        return {
            "id": agent_id,
            "owner": owner,
            "cost_center": cost_center,
            "source": "config" if spec is not None else "store",
            "disabled": bool((spec and spec.disabled) or (record and record.disabled)),
            "credential": "key" if jwks else ("secret" if record and record.secret_hash else "-"),
            "created_at": record.created_at if record else None,
            "grant_version": compile_grant(grant).version,
            "grant": grant.model_dump(mode="json"),
            "lifecycle": self._lifecycle(record) if record is not None else None,
        }

    def _lifecycle(self, record: AgentRecord) -> dict[str, Any]:
        """The agent's lifecycle in force (its own settings over gateway.yaml's defaults) and its credential's age."""
        agent = resolve(record, self.agents.specs, self.agents.templates)
        rules = policy(agent, self.live.current.agent_defaults)
        kind = credential_of(agent)
        set_at = credential_set_at(agent, kind)
        return {
            "expires": iso(rules.expires) if rules.expires is not None else None,
            "disable_after_idle": rules.disable_after_idle,
            "credential_max_age": rules.credential_max_age,
            "credential": kind,
            "credential_set_at": iso(set_at) if set_at is not None else None,
            "last_used": iso(agent.last_used) if agent.last_used is not None else None,
        }

    async def set_grant(self, agent_id: str, raw: Any, *, source: str = "grant") -> GrantSpec:
        """Replace a store agent's grant; live sessions use it from their next call.

        `raw` is validated exactly as agents.yaml's `grant:` block (gateway/config/files.py `parse_grant`).

        Raises:
            OperatorError: an invalid grant (one line naming the field), an agents.yaml agent, no such agent.
        """
        try:
            grant = parse_grant(raw, source)
        except ConfigError as exc:
            raise OperatorError(str(exc)) from None
        if agent_id in self.agents.specs:
            raise OperatorError(f"agent {agent_id!r} is defined in agents.yaml; change its grant there", status=409)
        record = await self.store.get_agent(agent_id)
        if record is None:
            raise OperatorError(f"no agent {agent_id!r}", status=404)
        if record.source == "config":
            raise OperatorError(f"agent {agent_id!r} is defined in agents.yaml; change its grant there", status=409)
        previous = compile_grant(parse_grant(record.grant, f"agent {agent_id}: stored grant")).version
        await self._update_agent(agent_id, grant=grant.model_dump(mode="json"))
        await self._audit(
            Event.AGENT_GRANT_CHANGED,
            agent=agent_id,
            owner=record.owner,
            grant=compile_grant(grant).version,
            previous_grant=previous,
            tools=list(grant.tools),
            resources=list(grant.resources),
            prompts=list(grant.prompts),
        )
        return grant

    # ------------------------------------------------------------ sessions

    async def list_sessions(self, agent: str | None = None, state: SessionState | None = None) -> list[SessionRecord]:
        return await self.store.list_sessions(agent, state, now=self.clock())

    async def end_session(self, sid: str, state: SessionState) -> None:
        """Close or revoke one live session.

        Raises:
            OperatorError: no such session, or it has already ended.
        """
        if not await self.sessions.end(sid, state, state, actor=self.actor):
            session = await self.store.get_session(sid)
            if session is None:
                raise OperatorError(f"no session {sid!r}", status=404)
            raise OperatorError(f"session {sid} is already {session.state}", status=409)

    async def revoke_agent_sessions(self, agent_id: str) -> list[str]:
        await self._known(agent_id)
        return await self.sessions.end_agent(agent_id, "revoked", actor=self.actor)

    async def resume_session(self, sid: str, add_calls: int = 0, add_tokens: int = 0) -> SessionRecord:
        """Lift a budget stop, optionally raising the session's limits."""
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (add_calls, add_tokens)):
            raise OperatorError("add_calls and add_tokens must be whole numbers, not negative")
        session = await self.store.resume_session(sid, add_calls, add_tokens, self.clock())
        if session is None:
            raise OperatorError(f"no live session {sid!r}", status=404)
        await self._audit(
            Event.SESSION_RESUMED,
            agent=session.agent,
            owner=session.owner,
            session=session.sid,
            task=session.task,
            add_calls=add_calls,
            add_tokens=add_tokens,
        )
        return session


def _spec_workload(spec: AgentSpec | None) -> dict[str, str] | None:
    return spec.workload.model_dump() if spec is not None and spec.workload is not None else None


def agent_rows(records: list[AgentRecord], specs: Mapping[str, AgentSpec]) -> list[dict[str, Any]]:
    """What `agents list` and the admin API show of each agent."""
    return [
        {
            "id": r.id,
            "owner": r.owner,
            "cost_center": r.cost_center,
            "source": r.source,
            "disabled": r.disabled or (r.id in specs and specs[r.id].disabled),
            "has_secret": r.secret_hash is not None,
            "private_key_jwt": bool(r.jwks),
            "workload": r.workload or _spec_workload(specs.get(r.id)),
        }
        for r in records
    ]


def session_json(session: SessionRecord) -> dict[str, Any]:
    return asdict(session)
