"""Hot reload: agents.yaml, the manifests and gateway.yaml's reloadable settings, without a restart.

`Reloader.run()` owns a task that hashes the files every `POLL_EVERY` seconds
and, where the platform has it, a SIGHUP receiver; either triggers `reload()`.
A reload validates everything first (gateway.yaml, agents.yaml, every
manifest) and changes nothing unless all of it is good. A bad file keeps the
running configuration: one log line naming file, field and reason, and an
audit `config.rejected`. A good change is applied in one step and audited as
`config.reloaded` with each file's SHA-256:

- servers: a new manifest starts its server and its `/servers/<name>/mcp`
  endpoint; a removed one leaves every list at once, its calls in flight finish
  (up to the server's timeout), then it stops; a changed one starts anew and
  the old one drains and stops (a change of `pins:` alone is gateway/pins/definitions.py's
  and restarts nothing);
- agents: the new definitions are used from each session's next call (the grant
  version changes, gateway/spend/budgets.py re-reads its limits); a removed agent's
  live sessions are revoked;
- gateway.yaml: only the `RELOADABLE` fields may change; a change to any
  `NOT_RELOADABLE` field is refused, naming the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from mcp.server.transport_security import TransportSecuritySettings

from gateway.audit.events import Event
from gateway.config.files import AgentSpec, GatewayConfig, load_agents, load_gateway_config, load_templates
from gateway.errors import ConfigError, Unavailable, UpstreamError
from gateway.http.transport import mcp_endpoint
from gateway.mcp.views import View
from gateway.tasks import OwnedTasks
from gateway.upstream.manifests import UpstreamSpec, load_manifests, manifest_files

if TYPE_CHECKING:
    from gateway.audit import Audit
    from gateway.config.live import LiveConfig
    from gateway.http.edge import Edge
    from gateway.identity.agents import AgentDirectory
    from gateway.identity.sessions import Sessions
    from gateway.mcp.server import Front
    from gateway.mcp.views import Names
    from gateway.pins.definitions import Pins
    from gateway.upstream import Upstream, Upstreams

log = logging.getLogger("gateway.reload")

POLL_EVERY = 1.0  # seconds between checks of the files' contents
DRAIN_GRACE = 1.0  # a call admitted just before a removal may still be on its way to the server
ACTOR = "config"  # the audit actor of what a reload does (sessions revoked with a removed agent)

RELOADABLE = frozenset(
    {
        "admin_token",
        "metrics_public",
        "prices",
        "require_pins",
        "operators",  # read at every console request: a removed operator is signed out at their next request
        "agent_defaults",  # read at each token request and lifecycle sweep
        "call_timeout",
        "upstream_hosts",  # read when manifests are loaded: a change restarts the servers it touches
    }
)
NOT_RELOADABLE = frozenset(
    {
        "public_url",
        "listen",
        "instance",
        "state_dir",
        "signing_key",
        "secrets_dir",
        "store",
        "audit",
        "manifests",
        "agents",
        "session_defaults",
        "identity_providers",
        "oauth_rate_limit",
        "shared_credentials",
        "allowed_origins",
        "allowed_hosts",
        "metering",
        "limits",
        "http",
        "work_dir",
        "workload_issuers",
        "dpop",
        "dpop_nonce",
        "telemetry",
        "login",
        "clients",
    }
)


@dataclass(frozen=True)
class Snapshot:
    """Everything a reload would apply, validated."""

    config: GatewayConfig
    agents: dict[str, AgentSpec]
    manifests: dict[str, UpstreamSpec]


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _same_server(a: UpstreamSpec, b: UpstreamSpec) -> bool:
    """Whether a server needs no restart: everything but its pins is unchanged."""
    return replace(a, pins={}) == replace(b, pins={})


class ServerEndpoints:
    """The per-server `/servers/<name>/mcp` endpoints of servers added while running."""

    def __init__(
        self, upstreams: Upstreams, names: Names, front: Front, security: TransportSecuritySettings, edge: Edge
    ) -> None:
        self.upstreams = upstreams
        self.names = names
        self.front = front
        self.security = security
        self.edge = edge
        self._stops: dict[str, anyio.Event] = {}
        self._tasks = OwnedTasks()  # where the added endpoints serve, while `run()` is entered

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self._tasks.run():
            yield

    @staticmethod
    def path(name: str) -> str:
        return f"/servers/{name}/mcp"

    async def add(self, name: str) -> None:
        tasks = self._tasks.group
        if self.path(name) in self.edge.apps or tasks is None:
            return
        endpoint = mcp_endpoint(self.front, View(self.upstreams, self.names, name), self.security)
        stop = self._stops[name] = anyio.Event()

        async def serve(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            async with endpoint.run():
                task_status.started()
                await stop.wait()

        await tasks.start(serve)
        self.edge.apps[self.path(name)] = endpoint
        self.edge.resources.add(self.path(name))

    def hide(self, name: str) -> None:
        """New requests to the path get 404 (it falls through to the router)."""
        self.edge.apps.pop(self.path(name), None)
        self.edge.resources.discard(self.path(name))

    def stop(self, name: str) -> None:
        stop = self._stops.pop(name, None)
        if stop is not None:
            stop.set()


class Reloader:
    """Watches the configuration files and applies a validated change to the running gateway."""

    def __init__(
        self,
        live: LiveConfig,
        *,
        agents: AgentDirectory,
        sessions: Sessions,
        upstreams: Upstreams,
        names: Names,
        pins: Pins,
        audit: Audit,
        clock: Callable[[], float],
        endpoints: ServerEndpoints,
        config_path: Path | None,
    ) -> None:
        self.live = live  # what a reload replaces: its readers see the new settings at their next use
        self.agents = agents
        self.sessions = sessions
        self.upstreams = upstreams
        self.names = names
        self.pins = pins
        self.audit = audit
        self.clock = clock
        self.endpoints = endpoints
        self.config_path = config_path  # None: gateway.yaml is not watched (agents.yaml and manifests still are)
        self._lock = anyio.Lock()
        self._tasks = OwnedTasks()  # polling, SIGHUP and retiring servers, while `run()` is entered
        self._seen: dict[str, str | None] = {}

    def hashes(self, config: GatewayConfig | None = None) -> dict[str, str | None]:
        """SHA-256 of every file a reload reads, by path."""
        config = config or self.live.current
        paths = [p for p in (self.config_path, config.agents) if p is not None]
        try:
            paths += manifest_files(config.manifests)
        except ConfigError:
            pass
        return {str(path): _sha256(path) for path in paths}

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Reloader]:
        """Poll the files (and listen for SIGHUP) until exit."""
        self._seen = self.hashes()
        async with self.endpoints.run(), self._tasks.run() as tg:
            tg.start_soon(self._poll)
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
                tg.start_soon(self._on_sighup)
            yield self

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(POLL_EVERY)
            if self.hashes() != self._seen:
                await self.reload("files changed")

    async def _on_sighup(self) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await self.reload("SIGHUP")

    # ------------------------------------------------------------ one reload

    async def reload(self, trigger: str) -> bool:
        """Validate the files and apply them; False (and the running configuration kept) when refused."""
        async with self._lock:
            self._seen = self.hashes()  # a refused state is reported once, not every second
            try:
                snapshot = self._read()
            except ConfigError as exc:
                await self._rejected(str(exc), trigger)
                return False
            hashes = self.hashes(snapshot.config)
            self._seen = hashes
            changes = await self._apply(snapshot)
            log.info("configuration reloaded (%s): %s", trigger, changes or "nothing changed")
            await self._audit(Event.CONFIG_RELOADED, trigger=trigger, files=hashes, **changes)
            return True

    def _read(self) -> Snapshot:
        """Everything, validated, or the first problem.

        Raises:
            ConfigError: `<file>: <field>: <reason>`, for a bad file or a change that needs a restart.
        """
        running = self.live.current
        config = running
        if self.config_path is not None:
            config = load_gateway_config(self.config_path)
            for name in sorted(NOT_RELOADABLE):
                if getattr(config, name) != getattr(running, name):
                    raise ConfigError(f"{self.config_path}: {name}: not reloadable; restart the gateway to change it")
        return Snapshot(config, load_agents(config.agents), load_manifests(config))

    async def _rejected(self, reason: str, trigger: str) -> None:
        log.error("configuration rejected, keeping the running one: %s", reason)
        file = reason.partition(": ")[0]
        await self._audit(Event.CONFIG_REJECTED, trigger=trigger, file=file, reason=reason)

    async def _audit(self, event: Event, **fields: Any) -> None:
        try:
            await self.audit.emit(event, durable=True, actor=ACTOR, **fields)
        except Unavailable as exc:
            log.error("%s not audited: %s", event, exc)

    async def _apply(self, snapshot: Snapshot) -> dict[str, list[str]]:
        old_specs = {name: u.spec for name, u in self.upstreams.servers.items()}
        added = sorted(set(snapshot.manifests) - set(old_specs))
        removed = sorted(set(old_specs) - set(snapshot.manifests))
        changed = sorted(
            n for n in set(old_specs) & set(snapshot.manifests) if not _same_server(old_specs[n], snapshot.manifests[n])
        )

        # Settings and agents first: they are plain swaps.
        require_pins_changed = self.pins.require_pins != snapshot.config.require_pins
        self.live.current = snapshot.config
        self.pins.require_pins = snapshot.config.require_pins
        old_agents = self.agents.specs
        self.agents.specs = snapshot.agents
        self.agents.templates = load_templates(snapshot.config.agents)
        self.agents.forget_all()
        agents_removed = sorted(set(old_agents) - set(snapshot.agents))
        agents_changed = sorted(
            a for a in set(old_agents) & set(snapshot.agents) if old_agents[a] != snapshot.agents[a]
        )
        agents_added = sorted(set(snapshot.agents) - set(old_agents))
        try:
            await self.agents.sync(self.clock())
            for agent_id in agents_removed:
                await self.sessions.end_agent(agent_id, "removed from agents.yaml", actor=ACTOR)
        except Unavailable as exc:  # the store catches up at the next reload or restart; this process is current
            log.error("agents.yaml applied here but not written to the store: %s", exc)

        # Servers: start the new ones before anything leaves, so a changed server has no gap.
        started: dict[str, Upstream] = {}
        for name in added + changed:
            spec = snapshot.manifests[name]
            self.pins.track(spec)
            try:
                started[name] = await self.upstreams.start(spec)
            except UpstreamError as exc:
                log.error("server %s not started: %s", name, exc)
        leaving = [self.upstreams.servers[name] for name in removed + changed]
        for name in removed:
            self.endpoints.hide(name)
            del self.upstreams.servers[name]
            self.pins.untrack(name)
        self.upstreams.servers.update(started)
        self.names.rebuild()
        for name in [*added, *changed, *removed]:
            for kind in ("tools", "resources", "prompts"):
                await self.upstreams.changed(name, kind)
        for name in added:
            await self.endpoints.add(name)
        if require_pins_changed:  # unpinned tools hide or show at once, not at the next re-list
            for name, upstream in list(self.upstreams.servers.items()):
                if name not in started:
                    await upstream.requarantine()
        for upstream in leaving:
            self._spawn(self._retire, upstream, upstream.name in removed)
        return {
            key: value
            for key, value in (
                ("servers_added", added),
                ("servers_removed", removed),
                ("servers_restarted", changed),
                ("agents_added", agents_added),
                ("agents_removed", agents_removed),
                ("agents_changed", agents_changed),
            )
            if value
        }

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._tasks.group is not None:
            self._tasks.group.start_soon(fn, *args)

    async def _retire(self, upstream: Upstream, removed: bool) -> None:
        """Let the calls in flight finish, then stop the server (and its endpoint, if it is gone for good)."""
        await anyio.sleep(DRAIN_GRACE)
        still = await upstream.drain(upstream.spec.timeout)
        if still:
            log.warning("server %s stopped with %d call(s) still in flight", upstream.name, still)
        await upstream.stop()
        if removed:
            self.endpoints.stop(upstream.name)
        log.info("server %s %s", upstream.name, "stopped" if removed else "restarted")
