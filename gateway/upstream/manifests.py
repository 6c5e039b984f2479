"""tool_manifests/<server>.yaml -> validated, frozen upstream specs.

Manifests are operator-trusted configuration: they start processes and name
URLs. `${secret:NAME}` resolves only from that server's own secrets
(`secrets_dir/<server>/NAME`, else the variable `GATEWAY_SECRET_<SERVER>_<NAME>`),
never from the gateway's other variables; a missing one is an error.

Every stdio server runs in a Landlock sandbox (gateway/sandbox.py): it can read
the system's runtime paths, the gateway's Python and its own command, and read
and write its own directory (`work_dir/<server>`, also its HOME and TMPDIR);
`sandbox: {read: [...], write: [...]}` adds paths. The gateway's state dir,
keys, store, audit files and other servers' secrets and directories are never
granted, whatever a manifest says. `sandbox: off` runs a server unconfined
(logged and audited); where the kernel cannot sandbox, only such servers start.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.durations import Duration
from gateway.config.files import SERVER_NAME, GatewayConfig, gateway_files, glob_matches, read_yaml, validation_message
from gateway.errors import ConfigError
from gateway.sandbox import Policy, Protected, overlap, runtime_paths, unavailable_reason

log = logging.getLogger("gateway.manifests")
_SECRET_REF = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}")
PIN = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # \Z, not $: no trailing newline


class SandboxPaths(BaseModel):
    """Paths a stdio server needs beyond its defaults; relative ones resolve against the manifest file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read: tuple[str, ...] = ()  # read and execute
    write: tuple[str, ...] = ()  # read, write, create, remove
    off: bool = False  # what `sandbox: off` reads as: the server runs unconfined

    @model_validator(mode="after")
    def _off_alone(self) -> SandboxPaths:
        if self.off and (self.read or self.write):
            raise ValueError("an unsandboxed server needs no read or write paths")
        return self


class Manifest(BaseModel):
    """The file as written. See DESIGN.md for the normative example."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    owner: str
    description: str | None = None
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    isolation: Literal["shared", "per_session"] = "shared"
    # Which protocol era the gateway speaks to the server: `auto` negotiates (2026-07-28 where offered; a
    # per_session connection follows the era of the client that opened it), a date pins it.
    protocol: Literal["auto", "2025-11-25", "2026-07-28"] = "auto"
    tools: Literal["*"] | tuple[str, ...] = Field(...)
    pins: dict[str, str] = {}
    timeout: Duration | None = None  # overrides gateway call_timeout for this server
    log_arguments: bool = False  # audit arguments with secret-looking values masked
    sandbox: SandboxPaths = SandboxPaths()  # stdio only; `sandbox: off` runs the server unconfined

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_switch(cls, value: Any) -> Any:
        if value is False or value == "off":  # YAML reads a bare `off` as false
            return {"off": True}
        if value is True or value == "on":
            return {}
        if not isinstance(value, dict | SandboxPaths):
            raise ValueError("must be off, or a mapping of read and write path lists")
        return value

    @field_validator("name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if not SERVER_NAME.fullmatch(value):
            raise ValueError(f"must match {SERVER_NAME.pattern}")
        return value

    @field_validator("pins")
    @classmethod
    def _pin_format(cls, value: dict[str, str]) -> dict[str, str]:
        for tool, pin in value.items():
            if not PIN.fullmatch(pin):
                raise ValueError(f"pin for {tool!r} must look like sha256:<64 hex digits>")
        return value

    @model_validator(mode="after")
    def _transport_fields(self) -> Manifest:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio manifest needs a command")
            if self.url or self.headers:
                raise ValueError("url and headers are for http manifests")
        else:
            if not self.url:
                raise ValueError("an http manifest needs a url")
            if self.command or self.args or self.env or self.cwd:
                raise ValueError("command, args, env and cwd are for stdio manifests")
            if "sandbox" in self.model_fields_set:
                raise ValueError("sandbox is for stdio manifests (an http server runs elsewhere)")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be an absolute http(s) URL")
        return self


@dataclass(frozen=True)
class UpstreamSpec:
    """A manifest with secrets and paths resolved: what the gateway runs."""

    name: str
    owner: str
    transport: Literal["stdio", "http"]
    isolation: Literal["shared", "per_session"]
    tools: frozenset[str] | None  # None: every tool the server lists ("*")
    pins: dict[str, str]
    timeout: float
    log_arguments: bool = False
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: Path | None = None
    work: Path | None = None  # stdio: the server's own directory (HOME, TMPDIR under it, default cwd)
    sandbox: Policy | None = None  # stdio: what it may reach; None runs it unconfined (`sandbox: off`)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    source: Path | None = None
    protocol: Literal["auto", "2025-11-25", "2026-07-28"] = "auto"

    @property
    def unsandboxed(self) -> bool:
        return self.transport == "stdio" and self.sandbox is None

    def exposes(self, tool: str) -> bool:
        """Whether the manifest lets this tool through at all (before grants)."""
        return self.tools is None or tool in self.tools


def _secret(config: GatewayConfig, server: str, name: str, where: str) -> str:
    path = config.secrets_dir / server / name
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    variable = f"GATEWAY_SECRET_{server.upper().replace('-', '_')}_{name.upper().replace('-', '_').replace('.', '_')}"
    if variable in os.environ:
        return os.environ[variable]
    raise ConfigError(f"{where}: ${{secret:{name}}} not found in {path} or ${variable}")


def _resolve_secrets(value: str, config: GatewayConfig, server: str, where: str) -> str:
    return _SECRET_REF.sub(lambda m: _secret(config, server, m.group(1), where), value)


def _command(command: str, base: Path) -> str:
    if command in ("python", "python3"):
        return sys.executable  # the gateway's own interpreter, where the Python servers are installed
    if "/" in command and not command.startswith("/"):
        return str((base / command).resolve())
    return command


def read_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file, secrets and paths unresolved.

    Raises:
        ConfigError: naming the file, the field and the reason.
    """
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None
    if manifest.name != path.stem:
        raise ConfigError(f"{path}: name: {manifest.name!r} must match the file name {path.stem!r}")
    return manifest


def load_manifest(path: Path, config: GatewayConfig) -> UpstreamSpec:
    """Validate one manifest file and resolve its secrets and paths.

    Raises:
        ConfigError: naming the file, the field and the reason.
    """
    manifest = read_manifest(path)
    base = path.resolve().parent

    def resolve(value: str, field: str) -> str:
        return _resolve_secrets(value, config, manifest.name, f"{path}: {field}")

    if manifest.url is not None:
        host = urlsplit(manifest.url).hostname or ""
        if not any(glob_matches(pattern, host) for pattern in config.upstream_hosts):
            raise ConfigError(f"{path}: url: host {host!r} is not in upstream_hosts of gateway.yaml")
    cwd = work = sandbox = None
    env = {k: resolve(v, f"env.{k}") for k, v in manifest.env.items()}
    command = _command(manifest.command, base) if manifest.command else None
    args = tuple(resolve(a, f"args[{i}]") for i, a in enumerate(manifest.args))
    if manifest.transport == "stdio":
        assert command is not None
        work = config.work_dir / manifest.name
        cwd = (base / manifest.cwd).resolve() if manifest.cwd else work
        env = {"HOME": str(work), "TMPDIR": str(work / "tmp"), **env}
        sandbox = _sandbox(manifest, path, config, command, args, env, cwd, work)
    return UpstreamSpec(
        name=manifest.name,
        owner=manifest.owner,
        transport=manifest.transport,
        isolation=manifest.isolation,
        tools=None if manifest.tools == "*" else frozenset(manifest.tools),
        pins=dict(manifest.pins),
        timeout=manifest.timeout or config.call_timeout,
        log_arguments=manifest.log_arguments,
        command=command,
        args=args,
        env=env,
        cwd=cwd,
        work=work,
        sandbox=sandbox,
        url=resolve(manifest.url, "url") if manifest.url else None,
        headers={k: resolve(v, f"headers.{k}") for k, v in manifest.headers.items()},
        source=path.resolve(),
        protocol=manifest.protocol,
    )


def _sandbox(
    manifest: Manifest,
    path: Path,
    config: GatewayConfig,
    command: str,
    args: tuple[str, ...],
    env: dict[str, str],
    cwd: Path,
    work: Path,
) -> Policy | None:
    """The paths this server may reach, refusing any that would expose the gateway's own files.

    Raises:
        ConfigError: a listed path overlaps the gateway's files, or the kernel cannot sandbox and the
            manifest does not say `sandbox: off`.
    """
    if manifest.sandbox.off:
        return None
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(
            f"{path}: sandbox: this stdio server cannot be sandboxed here: {reason}; "
            "set `sandbox: off` in its manifest to run it unsandboxed"
        )
    own_secrets = config.secrets_dir / manifest.name
    protected = [Protected(p, f"{field} ({p})") for p, field in gateway_files(config) if field != "secrets_dir"]
    protected += [
        Protected(config.secrets_dir, f"other servers' secrets (secrets_dir {config.secrets_dir})", own=own_secrets),
        Protected(config.work_dir, f"other servers' directories (work_dir {config.work_dir})", own=work),
    ]
    base = path.resolve().parent
    granted: dict[str, list[Path]] = {"read": [], "write": []}
    listed = [("read", i, v) for i, v in enumerate(manifest.sandbox.read)]
    listed += [("write", i, v) for i, v in enumerate(manifest.sandbox.write)]
    for kind, i, value in listed:
        grant = Path(os.path.abspath(base / value))
        hit = overlap(grant, protected)
        if hit is not None:
            raise ConfigError(
                f"{path}: sandbox.{kind}[{i}]: {value!r} would expose {hit.what}; "
                "no tool server is ever granted the gateway's own files"
            )
        granted[kind].append(grant)
    if manifest.cwd is not None and (hit := overlap(cwd, protected)) is not None:
        raise ConfigError(
            f"{path}: cwd: {manifest.cwd!r} would expose {hit.what}; a server's working directory is granted to it"
        )
    defaults = []
    for default in runtime_paths(command, args, env.get("PATH", os.environ.get("PATH"))):
        if (hit := overlap(default, protected)) is not None:  # e.g. a state dir inside the Python prefix
            log.warning("%s: sandbox: the default path %s is not granted: it would expose %s", path, default, hit.what)
        elif default.exists():
            defaults.append(default)
    return Policy(read=_unique(defaults + granted["read"]), write=_unique([work, cwd, *granted["write"]]))


def _unique(paths: list[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def manifest_files(directory: Path) -> list[Path]:
    """The manifest files of a directory, sorted.

    Raises:
        ConfigError: the directory does not exist.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: manifests directory not found")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_manifests(config: GatewayConfig) -> dict[str, UpstreamSpec]:
    """Load every manifest in `config.manifests`.

    Raises:
        ConfigError: the first bad file, naming file, field and reason.
    """
    specs: dict[str, UpstreamSpec] = {}
    for path in manifest_files(config.manifests):
        spec = load_manifest(path, config)
        specs[spec.name] = spec
    return specs


def describe(spec: UpstreamSpec) -> dict[str, Any]:
    """A secret-free summary for logs and `manifests validate`."""
    if spec.transport == "http":
        parts = urlsplit(spec.url or "")
        target = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    else:
        target = Path(spec.command or "").name
    return {"server": spec.name, "transport": spec.transport, "isolation": spec.isolation, "target": target}
