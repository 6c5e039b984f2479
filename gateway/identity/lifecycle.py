"""Agent lifecycle (non-human identity hygiene): expiry, idle disable, credential age.

Three settings per agent, each from agents.yaml (or, for an agent the CLI or admin API created,
its own settings in the store) or else gateway.yaml `agent_defaults`:
- `expires`: at that moment the agent is disabled and its sessions revoked (`agent.expired`);
- `disable_after_idle`: an agent with no token issued and no call made for that long is disabled
  the same way (`agent.idle_disabled`). Last use is the later of the agent row's `last_used`
  (written at token issuance, never per call) and its sessions' `last_seen` (which the per-call
  reservation already writes); an agent never used counts from its creation;
- `credential_max_age`: a secret or registered key set older than this is refused at /oauth/token
  (`ClientAuthenticator`); `agent.credential_stale` is audited once when it passes STALE_SHARE of it.

The periodic sweep enforces them (`Lifecycle.enforce`, from the gateway's watch loop) with the
gateway's clock; the token endpoint also refuses an expired agent itself, so a sweep that has not
run yet never lets one in. Each record is written once across replicas (`Store.first_alert`).
A workload identity has no stored credential: its platform's short-lived JWT has no age to limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from gateway.audit.events import Event
from gateway.config.files import AgentLifecycle
from gateway.errors import Unavailable
from gateway.identity.agents import Agent

if TYPE_CHECKING:
    from gateway.audit import Audit
    from gateway.config.live import LiveConfig
    from gateway.identity.agents import AgentDirectory
    from gateway.identity.sessions import Sessions
    from gateway.store import Store

log = logging.getLogger("gateway.lifecycle")

STALE_SHARE = 0.8  # `agent.credential_stale` once a credential has lived this share of credential_max_age
CHECK_EVERY = 60.0  # seconds of the gateway's clock between lifecycle checks (the sweep runs every second)
ACTOR = "lifecycle"
Credential = Literal["secret", "private_key_jwt", "workload", "none"]


@dataclass(frozen=True)
class Policy:
    expires: float | None
    disable_after_idle: float | None
    credential_max_age: float | None


def policy(agent: Agent, defaults: AgentLifecycle) -> Policy:
    """The agent's own settings where agents.yaml gives them (null: never), the gateway's defaults elsewhere."""
    merged = {**defaults.model_dump(), **agent.lifecycle}
    return Policy(merged["expires"], merged["disable_after_idle"], merged["credential_max_age"])


def credential_of(agent: Agent) -> Credential:
    """How the agent authenticates at /oauth/token (its registered keys win over a secret, as in `agents show`)."""
    if agent.workload is not None:
        return "workload"
    if agent.jwks:
        return "private_key_jwt"
    return "secret" if agent.secret_hash is not None else "none"


def credential_set_at(agent: Agent, kind: Credential) -> float | None:
    """When the credential of `kind` was set (secret created or rotated, key set registered or changed)."""
    if kind == "secret":
        return agent.secret_at if agent.secret_at is not None else agent.created_at
    if kind == "private_key_jwt":
        return agent.keys_at if agent.keys_at is not None else agent.created_at
    return None


def last_use(agent: Agent, last_seen: float | None) -> float:
    """The agent's latest token or call; its creation when it has none."""
    return max(agent.created_at, agent.last_used or 0.0, last_seen or 0.0)


def own_settings(raw: Mapping[str, Any]) -> dict[str, float | None]:
    """A store agent's own lifecycle settings, validated as agents.yaml's: only the fields it gives.

    Raises:
        ValueError: one line naming the field and what is wrong.
    """
    try:
        parsed = AgentLifecycle.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "lifecycle"
        raise ValueError(f"{field}: {error['msg'].removeprefix('Value error, ')}") from None
    return {name: getattr(parsed, name) for name in parsed.model_fields_set}


def days(seconds: float) -> str:
    """A duration in days for messages: whole days plainly, else one decimal."""
    value = seconds / 86400
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def stale_refusal(agent: Agent, kind: Credential, max_age: float | None, now: float) -> str | None:
    """Why this credential is too old to use, naming how to renew it; None while it is young enough.

    Only for a caller that has just proved it holds the credential: the message says nothing to anyone else.
    """
    set_at = credential_set_at(agent, kind)
    if max_age is None or set_at is None or now - set_at <= max_age:
        return None
    what = "client secret" if kind == "secret" else "client key set"
    return f"{what} is older than credential_max_age ({days(max_age)} days): {_renewal(agent, kind)}"


def _renewal(agent: Agent, kind: Credential) -> str:
    """How to renew a stored credential of `kind`."""
    if kind == "secret":
        return f"rotate it with mcp-gateway agents rotate {agent.id}"
    return "register a new key in the agent's jwks"


class Lifecycle:
    """The lifecycle checks of the gateway's periodic sweep."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        agents: AgentDirectory,
        sessions: Sessions,
        audit: Audit,
        clock: Callable[[], float],
    ) -> None:
        self.live = live  # `agent_defaults` reloads
        self.store = store
        self.agents = agents
        self.sessions = sessions
        self.audit = audit
        self.clock = clock
        self._checked: float | None = None

    async def maybe_enforce(self) -> None:
        """Run `enforce` when CHECK_EVERY of the gateway's clock has passed since the last run."""
        now = self.clock()
        if self._checked is not None and now - self._checked < CHECK_EVERY:
            return
        await self.enforce(now)
        self._checked = now

    async def enforce(self, now: float) -> None:
        """Disable expired and idle agents (revoking their sessions); alert on credentials near their max age.

        Raises:
            StoreUnavailable: the store cannot be consulted (the next sweep tries again).
        """
        defaults = self.live.current.agent_defaults
        records = await self.store.list_agents()
        last_seen: dict[str, float] | None = None
        for record in records:
            agent = self.agents.resolve(record)
            rules = policy(agent, defaults)
            if not agent.disabled and rules.expires is not None and now >= rules.expires:
                await self._disable(
                    agent, Event.AGENT_EXPIRED, "agent expired", f"expires:{rules.expires}", expires=iso(rules.expires)
                )
                continue
            if not agent.disabled and rules.disable_after_idle is not None:
                if last_seen is None:
                    last_seen = await self.store.last_seen_by_agent()
                used = last_use(agent, last_seen.get(agent.id))
                if now - used >= rules.disable_after_idle:
                    await self._disable(
                        agent,
                        Event.AGENT_IDLE_DISABLED,
                        "agent idle",
                        f"idle:{used}",
                        last_used=iso(used),
                        idle_days=days(now - used),
                        disable_after_idle_days=days(rules.disable_after_idle),
                    )
                    continue
            if not agent.disabled and rules.credential_max_age is not None:
                await self._stale(agent, rules.credential_max_age, now)

    async def _disable(self, agent: Agent, event: Event, reason: str, once: str, **fields: str) -> None:
        await self.store.update_agent(agent.id, disabled=True)
        self.agents.forget(agent.id)
        revoked = await self.sessions.end_agent(agent.id, reason, actor=ACTOR)
        if await self.store.first_alert(f"agent:{agent.id}", f"{event}:{once}", 1.0):
            log.warning("agent %s disabled: %s", agent.id, reason)
            await self.audit.emit(
                event, durable=True, actor=ACTOR, agent=agent.id, owner=agent.owner, sessions_revoked=revoked, **fields
            )

    async def _stale(self, agent: Agent, max_age: float, now: float) -> None:
        kind = credential_of(agent)
        set_at = credential_set_at(agent, kind)
        if set_at is None or now - set_at < STALE_SHARE * max_age:
            return
        if await self.store.first_alert(f"agent:{agent.id}", f"credential_stale:{kind}:{set_at}", STALE_SHARE):
            refused_from = set_at + max_age
            await self.audit.emit(
                Event.AGENT_CREDENTIAL_STALE,
                durable=True,
                actor=ACTOR,
                agent=agent.id,
                owner=agent.owner,
                credential=kind,
                age_days=days(now - set_at),
                credential_max_age_days=days(max_age),
                refused_from=iso(refused_from),
                action=_renewal(agent, kind),
            )


async def sweep(lifecycle: Lifecycle) -> None:
    """One guarded pass, for the watch loop: a store outage is logged and retried at the next sweep."""
    try:
        await lifecycle.maybe_enforce()
    except Unavailable as exc:
        log.warning("agent lifecycle: %s", exc)
