"""`mcp-gateway manifests validate | pin`: check tool manifests and the tools they serve; pin reviewed definitions.

Both connect to servers the way the gateway does (the same upstream connection
code, started from the manifest; no running gateway needed). `validate
--offline` checks the files only; `validate FILE...` without `--config` checks
single files (a tool owner's CI) and says which gateway-side checks it skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.commands._context import opened, operator, run
from gateway.config.files import GatewayConfig, load_gateway_config
from gateway.errors import ConfigError, GatewayError, UpstreamError
from gateway.pins import definitions as pins
from gateway.pins import lockfile, pinning
from gateway.pins.lint import lint
from gateway.terminal import safe
from gateway.upstream import Upstreams
from gateway.upstream.manifests import UpstreamSpec, describe, load_manifest, manifest_files, read_manifest

SETTLE = 0.3  # seconds without a tool-list change after connecting before a server's list counts as final
SETTLE_LIMIT = 5.0  # a server whose list never stays still is taken as it is then


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("manifests", help="tool manifests").add_subparsers(dest="action", required=True)
    validate = group.add_parser(
        "validate",
        help="validate manifests and lint the tools they serve",
        description="Validate manifest files (a tool owner's CI needs no gateway.yaml) or directories. "
        "Exit status: 0 valid, 1 invalid (or warnings with --strict), 2 usage error.",
    )
    validate.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="manifest files or directories (default: the manifests directory of gateway.yaml)",
    )
    validate.add_argument(
        "--config",
        metavar="PATH",
        help="gateway.yaml: also check upstream_hosts and secrets "
        "and connect to the servers (default: ./gateway.yaml unless only files are given)",
    )
    validate.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one object per file {file, ok, errors[{field, reason}], warnings, skipped}",
    )
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")
    validate.add_argument("--offline", action="store_true", help="check the files only; do not connect to servers")
    validate.set_defaults(run=_validate, config_optional=True)  # files alone need no gateway.yaml
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

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
_NEEDS_CONFIG = "upstream_hosts, secrets and the server's tools not checked: they need --config gateway.yaml"


@dataclass
class FileResult:
    """What `validate` found in one file (the `--format json` object)."""

    file: str
    errors: list[dict[str, str]] = field(default_factory=list)  # {field, reason}
    warnings: list[dict[str, str]] = field(default_factory=list)  # {tool, reason}
    skipped: list[str] = field(default_factory=list)  # checks not run, and why

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, exc: ConfigError | str) -> None:
        message = str(exc)
        rest = message.removeprefix(f"{self.file}: ")
        name, colon, reason = rest.partition(": ")
        self.errors.append(
            {"field": name, "reason": reason} if colon and rest != message else {"field": "(file)", "reason": rest}
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "skipped": self.skipped,
        }


def _validate(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        sys.stderr.write(f"mcp-gateway: error: {missing[0]}: no such file or directory\n")
        return EXIT_USAGE
    only_files = bool(args.paths) and all(p.is_file() for p in args.paths)
    from gateway.cli import config_path as discovered  # --config, else $GATEWAY_CONFIG, else ./gateway.yaml

    config_path = args.config or (None if only_files else discovered(None))
    config = load_gateway_config(Path(config_path)) if config_path else None
    files: list[Path] = []
    for path in args.paths or [config.manifests]:  # type: ignore[union-attr]
        files.extend(manifest_files(path) if path.is_dir() else [path])
    results = {path: FileResult(str(path)) for path in files}
    specs: dict[str, UpstreamSpec] = {}
    by_server: dict[str, FileResult] = {}
    for path in files:
        result = results[path]
        try:
            manifest = read_manifest(path)
            if config is None:
                result.skipped.append(_NEEDS_CONFIG)
                _unexposed_pins(result, manifest.name, manifest.pins, functools.partial(_listed, manifest.tools))
                continue
            spec = load_manifest(path, config)
        except ConfigError as exc:
            result.error(exc)
            continue
        specs[spec.name] = spec
        by_server[spec.name] = result
        if spec.unsandboxed:
            result.warnings.append({"tool": spec.name, "reason": "runs unsandboxed (its manifest says sandbox: off)"})
        _unexposed_pins(result, spec.name, spec.pins, spec.exposes)
    if specs and config is not None and not args.offline:
        _check_served(specs, config, by_server)
    _report(args.format, files, results, specs)
    errors = sum(not r.ok for r in results.values())
    warnings = sum(len(r.warnings) for r in results.values())
    if errors:
        raise ConfigError(f"{errors} of {len(files)} manifest(s) invalid")
    if warnings and args.strict:
        raise ConfigError(f"{warnings} warning(s), and --strict fails on warnings")
    return EXIT_OK


def _listed(tools: str | Sequence[str], tool: str) -> bool:
    """Whether a manifest's `tools:` (a list, or "*") exposes this tool."""
    return tools == "*" or tool in tools


def _unexposed_pins(result: FileResult, server: str, pinned: Iterable[str], exposes: Callable[[str], bool]) -> None:
    """Warn of each pin naming a tool the manifest's tools list does not let through."""
    for tool in sorted(pinned):
        if not exposes(tool):
            result.warnings.append(
                {"tool": f"{server}.{tool}", "reason": "pinned, but the manifest's tools list does not expose it"}
            )


def _check_served(specs: dict[str, UpstreamSpec], config: GatewayConfig, by_server: dict[str, FileResult]) -> None:
    """Start each server as the gateway would, lint its tools, compare them with the pins."""
    served, failed = anyio.run(served_tools, specs, config)
    for name, reason in sorted(failed.items()):
        by_server[name].errors.append({"field": "(server)", "reason": f"cannot list its tools: {reason}"})
    everyone = {tool for tools in served.values() for tool in tools}
    for name, tools in sorted(served.items()):
        warnings = by_server[name].warnings

        def warn(tool: str, reason: str) -> None:
            warnings.append({"tool": f"{name}.{tool}", "reason": reason})  # noqa: B023 - used at once

        hidden, changes = pins.check(tools, specs[name].pins, config.require_pins)  # what the gateway would hide
        changed = {change.tool for change in changes}
        for tool_name, tool in sorted(tools.items()):
            for reason in lint(tool, everyone):
                warn(tool_name, reason)
            if tool_name in changed:
                warn(tool_name, "the served definition does not match its pin (the gateway hides it)")
            elif tool_name in hidden:
                warn(tool_name, "not pinned (require_pins hides it)")
        for tool_name in sorted(specs[name].pins):
            if tool_name not in tools and specs[name].exposes(tool_name):
                warn(tool_name, "pinned, but the server no longer serves it")


def _report(fmt: str, files: list[Path], results: dict[Path, FileResult], specs: dict[str, UpstreamSpec]) -> None:
    if fmt == "json":
        print(json.dumps([results[path].as_json() for path in files], indent=2))
        return
    described = {spec.source: describe(spec) for spec in specs.values()}
    for path in files:
        result = results[path]
        for error in result.errors:
            where = "" if error["field"] in ("(file)", "(server)") else f"{error['field']}: "
            sys.stderr.write(safe(f"error: {result.file}: {where}{error['reason']}") + "\n")
        if result.ok:
            info = described.get(path.resolve())
            target = f": {info['server']} ({info['transport']}, {info['isolation']}) {info['target']}" if info else ""
            print(f"ok: {path.name}{target}")
        for note in result.skipped:
            print(f"skipped: {path.name}: {note}")
    for path in files:
        for warning in results[path].warnings:
            print(safe(f"warning: {warning['tool']}: {warning['reason']}"))  # tool names quote what servers serve


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
        change = pinning.plan(path, spec.name, spec.owner, spec.pins, served[spec.name], args.tool)
        entries = change.entries
        if not entries:
            print(f"{spec.name}: pins are up to date ({path})")
            return 0
        counts = {kind: sum(e.kind == kind for e in entries) for kind in ("new", "changed", "removed")}
        print(f"{spec.name}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        for entry in entries:
            print("\n".join(map(safe, lockfile.describe(entry))))  # served names and definitions
        _confirm(args.yes, f"Write {len(entries)} pin change(s) to {path}?")
        async with opened(args) as gw:
            await pinning.write(change, gw.audit, operator())
        after = change.after
        print(f"wrote {len(after)} pin(s) to {path}")
        return 0

    return run(body)
