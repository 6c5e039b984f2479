"""The collaborators the sign-in flow (flow, grants, clients, register, identity) uses, built once by app.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.audit import Audit
from gateway.config.files import GatewayConfig
from gateway.identity.agents import AgentDirectory
from gateway.identity.sealing import Sealer
from gateway.identity.sessions import Sessions
from gateway.store import Store


@dataclass(frozen=True)
class LoginDeps:
    config: GatewayConfig  # only what never reloads: public_url, login, clients
    store: Store
    audit: Audit
    agents: AgentDirectory
    sessions: Sessions
    sealer: Sealer  # the sign-in's cookies
    credential_key: bytes  # registered clients' secrets
    clock: Callable[[], float]
