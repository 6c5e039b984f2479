"""Tool pins: a reviewed tool definition becomes part of the grant; a changed one is quarantined.

A pin is `sha256:<64 hex>`: SHA-256 over one canonical serialisation of the
parts of a tool definition a model or a user reads:

    {"annotations": ..., "description": ..., "inputSchema": ...,
     "name": ..., "outputSchema": ..., "title": ...}

as JSON with keys sorted at every level, no whitespace, UTF-8 (RFC 8785 style,
like the audit chain; numbers as Python's json renders them, lone surrogates
passed through). Absent fields are null; annotations are their wire object
without null members (an empty one is null). Key order and whitespace of what
the server sent never change a pin; any change to a text or a schema does.

At runtime (`Pins`), every time an upstream's tool list is (re-)listed —
connect, restart, reconnect, list_changed — each exposed tool is checked:

- pinned, definition differs: quarantined (hidden from every list, calls get
  `Unknown tool`), audited once per change as `tool.changed` with the old and
  new pin, counted in `gateway_tool_changes_total`;
- not pinned, and gateway.yaml has `require_pins: true`: hidden until pinned.

A running gateway follows re-pinning without a restart: a manifest's `pins:` are
re-read when its file changes (modification time, size or inode), checked on
every re-list and every `RECHECK_EVERY` seconds. Only `pins:` are taken from a
re-read file here; other manifest changes are hot reload's (gateway/config/reload.py),
which restarts the server. A file that no longer validates keeps the pins in
force and is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types

from gateway.audit import Audit
from gateway.audit.events import Event
from gateway.canonical import pinned
from gateway.errors import AuditUnavailable, ConfigError
from gateway.metrics import METRICS
from gateway.upstream.manifests import UpstreamSpec, read_manifest

if TYPE_CHECKING:
    from gateway.upstream import Catalog, Upstream

log = logging.getLogger("gateway.pins")

RECHECK_EVERY = 1.0  # seconds between checks of the manifest files for new pins

CHANGES = METRICS.counter("gateway_tool_changes_total", "Pinned tool definitions seen changed", ["server"])
HIDDEN = METRICS.gauge("gateway_tools_hidden", "Tools hidden by pins", ["server", "reason"])


def definition(tool: types.Tool) -> dict[str, Any]:
    """The pinned parts of a tool definition, in wire names."""
    annotations = tool.annotations and tool.annotations.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
        "annotations": annotations or None,
    }


def digest(definition: Mapping[str, Any]) -> str:
    """The pin of a definition as `definition()` returns it."""
    return "sha256:" + hashlib.sha256(pinned(definition)).hexdigest()


def pin(tool: types.Tool) -> str:
    return digest(definition(tool))


@dataclass(frozen=True)
class Change:
    """A pinned tool whose served definition no longer matches its pin."""

    tool: str
    pinned: str
    served: str


def check(
    tools: Mapping[str, types.Tool], pins: Mapping[str, str], require_pins: bool
) -> tuple[frozenset[str], list[Change]]:
    """Which of these tools to hide, and the pinned ones among them that changed."""
    changes = [
        Change(name, pins[name], served)
        for name, tool in sorted(tools.items())
        if name in pins and (served := pin(tool)) != pins[name]
    ]
    hidden = {change.tool for change in changes}
    if require_pins:
        hidden.update(name for name in tools if name not in pins)
    return frozenset(hidden), changes


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class Pins:
    """Keeps every upstream's quarantine in step with its pins; installed as the hub's quarantine check."""

    def __init__(self, specs: Mapping[str, UpstreamSpec], audit: Audit, *, require_pins: bool) -> None:
        self.audit = audit
        self.require_pins = require_pins
        self.pins = {name: dict(spec.pins) for name, spec in specs.items()}
        self._stamps = {name: _stamp(spec.source) for name, spec in specs.items()}
        self._listed: dict[str, Upstream] = {}  # the servers that have listed their tools: what the watch re-checks
        self._reported: dict[tuple[str, str], tuple[str, str]] = {}  # (server, tool) -> (pinned, served)

    def track(self, spec: UpstreamSpec) -> None:
        """A server started by hot reload: its pins as its (new) manifest has them."""
        self.pins[spec.name] = dict(spec.pins)
        self._stamps[spec.name] = _stamp(spec.source)

    def untrack(self, name: str) -> None:
        """A server removed by hot reload."""
        self.pins.pop(name, None)
        self._stamps.pop(name, None)
        self._listed.pop(name, None)
        for key in [k for k in self._reported if k[0] == name]:
            del self._reported[key]

    async def settle(self, upstream: Upstream, catalog: Catalog) -> frozenset[str]:
        """The tools of this catalog to hide; audits each change once."""
        self._listed[upstream.name] = upstream
        self._reload(upstream)
        pins = self.pins.get(upstream.name, {})
        hidden, changes = check(catalog.tools, pins, self.require_pins)
        changed = {change.tool for change in changes}
        for key in [k for k in self._reported if k[0] == upstream.name and k[1] not in changed]:
            if key[1] in catalog.tools or key[1] not in pins:  # back in line; a tool missing for now stays reported
                del self._reported[key]
        for change in changes:
            await self._report(upstream, change)
        HIDDEN.set(upstream.name, "changed", value=len(changes))
        HIDDEN.set(upstream.name, "unpinned", value=len(hidden) - len(changes))
        return hidden

    async def _report(self, upstream: Upstream, change: Change) -> None:
        server = upstream.name
        key, seen = (server, change.tool), (change.pinned, change.served)
        if self._reported.get(key) == seen:
            return
        log.warning("quarantined %s.%s: its definition no longer matches its pin", server, change.tool)
        try:
            await self.audit.emit(
                Event.TOOL_CHANGED,
                durable=True,
                server=server,
                server_owner=upstream.spec.owner,
                tool=change.tool,
                old_pin=change.pinned,
                new_pin=change.served,
                decision="quarantine",
            )
        except AuditUnavailable as exc:  # stays hidden; reported again at the next re-list
            log.error("tool.changed for %s.%s not audited: %s", server, change.tool, exc)
            return
        self._reported[key] = seen
        CHANGES.inc(server)

    def _reload(self, upstream: Upstream) -> bool:
        """Re-read the manifest's pins if its file changed; True when they did."""
        path = upstream.spec.source
        stamp = _stamp(path)
        if path is None or stamp is None or stamp == self._stamps.get(upstream.name):
            return False
        self._stamps[upstream.name] = stamp
        try:
            pins = dict(read_manifest(path).pins)  # validated with the rest of the file
        except ConfigError as exc:
            # Hot reload reports the bad file once (log line and config.rejected); this is the detail.
            log.debug("keeping the pins in force for %s: %s", upstream.name, exc)
            return False
        if pins == self.pins.get(upstream.name):
            return False
        log.info("pins of %s re-read from %s", upstream.name, path)
        self.pins[upstream.name] = pins
        return True

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Pick up re-pinned manifests until exit."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(RECHECK_EVERY)
            for upstream in list(self._listed.values()):
                if self._reload(upstream):
                    await upstream.requarantine()
