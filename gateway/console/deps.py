"""The collaborators the console's pages use, built once by app.py: the console sees nothing else of the gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio

from gateway.audit import Audit
from gateway.config.files import GatewayConfig
from gateway.config.live import LiveConfig
from gateway.http.edge import AuthFailures
from gateway.identity.keys import KeyRing
from gateway.operations import Operations
from gateway.pins.definitions import Pins
from gateway.store import Store
from gateway.upstream import Upstreams


@dataclass(frozen=True)
class ConsoleDeps:
    live: LiveConfig  # `operators`, `admin_token` and `require_pins` reload: read at each request
    store: Store
    audit: Audit
    keys: KeyRing
    upstreams: Upstreams
    pins: Pins
    operations: Callable[[str], Operations]  # the CLI's operations, audited as the given actor
    failures: AuthFailures  # failed sign-ins, aggregated with the edge's
    hosts: set[str]  # the Host values and origins the edge accepts (gateway/http/edge.py)
    origins: set[str]
    console_key: bytes  # seals the console's session cookies (gateway/console/auth.py)
    stopping: anyio.Event  # set at shutdown: the live pages' event streams end
    clock: Callable[[], float]

    @property
    def config(self) -> GatewayConfig:
        return self.live.current
