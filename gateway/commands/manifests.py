"""`mcp-gateway manifests validate | pin`: check tool manifests and the tools they serve; pin reviewed definitions.

Both connect to servers the way the gateway does (the same upstream connection
code, started from the manifest; no running gateway needed). `validate
--offline` checks the files only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway import lockfile, pins
from gateway.commands._context import opened, operator, run
from gateway.config import GatewayConfig, load_gateway_config
from gateway.errors import ConfigError, GatewayError, UpstreamError
from gateway.lint import lint
from gateway.manifests import UpstreamSpec, describe, load_manifest, manifest_files
from gateway.terminal import safe
from gateway.upstream import Upstreams

SETTLE = 0.3  # seconds without a tool-list change after connecting before a server's list counts as final
SETTLE_LIMIT = 5.0  # a server whose list never stays still is taken as it is then


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("manifests", help="tool manifests").add_subparsers(dest="action", required=True)
    validate = group.add_parser("validate", parents=[common], help="validate manifests and lint the tools they serve")
    validate.add_argument("dir", nargs="?", type=Path, help="manifests directory (default: from gateway.yaml)")
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")
    validate.add_argument("--offline", action="store_true", help="check the files only; do not connect to servers")
    validate.set_defaults(run=_validate)
    pin = group.add_parser("pin", parents=[common], help="pin a server's tool definitions in its manifest")
    pin.add_argument("server", help="the server (manifest name) to pin")
    pin.add_argument("--tool", metavar="NAME", help="pin only this tool")
    pin.add_argument("--yes", action="store_true", help="write without asking (for scripts)")
    pin.set_defaults(run=_pin)


async def served_tools(
    specs: Mapping[str, UpstreamSpec], config: GatewayConfig
) -> tuple[dict[str, Mapping[str, types.Tool]], dict[str, str]]:
    """Connect to each server, let its tool list settle, and list the tools its manifest exposes.

    Returns the tools per server, and why each server that could not be listed failed.
    """
    logs = config.state_dir / "logs"
    upstreams = Upstreams(specs, stderr_dir=logs)
    changed = anyio.Event()

    async def on_change(server: str, kind: str) -> None:
        changed.set()

    upstreams.on_change(on_change)
    served: dict[str, Mapping[str, types.Tool]] = {}
    failed: dict[str, str] = {}
    async with _quiet("gateway.upstream"), upstreams.run():  # failures are reported once, below
        with anyio.move_on_after(SETTLE_LIMIT):
            while True:  # servers that register tools after initialize announce them with list_changed
                with anyio.move_on_after(SETTLE):
                    await changed.wait()
                if not changed.is_set():
                    break
                changed = anyio.Event()
        for name, upstream in upstreams.servers.items():
            if not upstream.up:
                failed[name] = f"{upstream.main.last_error or 'not reachable'} (see {logs / f'{name}.stderr.log'})"
                continue
            try:
                with anyio.fail_after(upstream.spec.timeout):
                    await upstream.refresh()
            except TimeoutError:
                failed[name] = f"listing its tools took longer than {upstream.spec.timeout:g}s"
                continue
            except (GatewayError, MCPError) as exc:
                failed[name] = str(exc)
                continue
            served[name] = upstream.catalog.tools
    return served, failed


@contextlib.asynccontextmanager
async def _quiet(logger: str) -> AsyncIterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# ---------------------------------------------------------------- validate


def _validate(args: argparse.Namespace) -> int:
    config = load_gateway_config(Path(args.config))
    directory = args.dir or config.manifests
    errors, warnings = 0, 0
    files = manifest_files(directory)
    specs: dict[str, UpstreamSpec] = {}
    for path in files:
        try:
            spec = load_manifest(path, config)
        except ConfigError as exc:
            errors += 1
            sys.stderr.write(f"error: {exc}\n")
            continue
        specs[spec.name] = spec
        info = describe(spec)
        print(f"ok: {path.name}: {info['server']} ({info['transport']}, {info['isolation']}) {info['target']}")

    def warn(server: str, tool: str, reason: str) -> None:
        nonlocal warnings
        warnings += 1
        print(safe(f"warning: {server}.{tool}: {reason}"))  # tool names and reasons quote what servers serve

    for spec in specs.values():
        if spec.unsandboxed:
            warnings += 1
            print(f"warning: {spec.name}: runs unsandboxed (its manifest says sandbox: off)")
        for tool in sorted(spec.pins):
            if not spec.exposes(tool):
                warn(spec.name, tool, "pinned, but the manifest's tools list does not expose it")
    if specs and not args.offline:
        served, failed = anyio.run(served_tools, specs, config)
        for name, reason in sorted(failed.items()):
            errors += 1
            sys.stderr.write(safe(f"error: {specs[name].source}: cannot list its tools: {reason}") + "\n")
        everyone = {tool for tools in served.values() for tool in tools}
        for name, tools in sorted(served.items()):
            hidden, changes = pins.check(tools, specs[name].pins, config.require_pins)  # what the gateway would hide
            changed = {change.tool for change in changes}
            for tool_name, tool in sorted(tools.items()):
                for reason in lint(tool, everyone):
                    warn(name, tool_name, reason)
                if tool_name in changed:
                    warn(name, tool_name, "the served definition does not match its pin (the gateway hides it)")
                elif tool_name in hidden:
                    warn(name, tool_name, "not pinned (require_pins hides it)")
            for tool_name in sorted(specs[name].pins):
                if tool_name not in tools and specs[name].exposes(tool_name):
                    warn(name, tool_name, "pinned, but the server no longer serves it")
    if errors:
        raise ConfigError(f"{errors} of {len(files)} manifest(s) invalid")
    if warnings and args.strict:
        raise ConfigError(f"{warnings} warning(s), and --strict fails on warnings")
    return 0


# ---------------------------------------------------------------- pin


def _manifest_path(config: GatewayConfig, server: str) -> Path:
    for path in manifest_files(config.manifests):
        if path.stem == server:
            return path
    raise ConfigError(f"no manifest for server {server!r} in {config.manifests}")


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError("not writing pins without confirmation: stdin is not a terminal (pass --yes)")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise GatewayError("pins not written")


def _pin(args: argparse.Namespace) -> int:
    config = load_gateway_config(Path(args.config))
    path = _manifest_path(config, args.server)
    spec = load_manifest(path, config)

    async def body() -> int:
        served, failed = await served_tools({spec.name: spec}, config)
        if spec.name in failed:
            raise UpstreamError(f"cannot list the tools of {spec.name!r}: {failed[spec.name]}")
        tools = served[spec.name]
        definitions = {name: pins.definition(tool) for name, tool in tools.items()}
        new = {name: pins.digest(d) for name, d in definitions.items()}
        names = set(spec.pins) | set(new)
        if args.tool is not None:
            if args.tool not in names:
                raise ConfigError(f"{spec.name!r} serves no tool {args.tool!r} and has no pin for it")
            names = {args.tool}
        recorded = lockfile.read_record(path)
        entries = lockfile.plan(spec.pins, new, definitions, recorded, names)
        if not entries:
            print(f"{spec.name}: pins are up to date ({path})")
            return 0
        counts = {kind: sum(e.kind == kind for e in entries) for kind in ("new", "changed", "removed")}
        print(f"{spec.name}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        for entry in entries:
            print("\n".join(map(safe, lockfile.describe(entry))))  # served names and definitions
        _confirm(args.yes, f"Write {len(entries)} pin change(s) to {path}?")
        after = {name: p for name, p in spec.pins.items() if name not in names}
        after.update({name: new[name] for name in names if name in new})
        record = {name: d for name, d in recorded.items() if name in after and name not in names}
        record.update({name: definitions[name] for name in names if name in new})
        async with opened(args) as gw:
            for entry in entries:
                await gw.audit.emit("tool.pinned", durable=True, server=spec.name, tool=entry.tool,
                                    old_pin=entry.old_pin, new_pin=entry.new_pin, actor=operator())
        lockfile.write_pins(path, after)
        lockfile.write_record(path, record)
        print(f"wrote {len(after)} pin(s) to {path}")
        return 0

    return run(body)
