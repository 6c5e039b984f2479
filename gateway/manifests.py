"""tool_manifests/<server>.yaml -> validated, frozen upstream specs.

Manifests are operator-trusted configuration: they start processes and name
URLs. `${secret:NAME}` resolves only from that server's own secrets
(`secrets_dir/<server>/NAME`, else the variable `GATEWAY_SECRET_<SERVER>_<NAME>`),
never from the gateway's other variables; a missing one is an error.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import SERVER_NAME, GatewayConfig, glob_matches, read_yaml, validation_message
from gateway.durations import Duration
from gateway.errors import ConfigError

_SECRET_REF = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}")
PIN = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # \Z, not $: no trailing newline


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
    tools: Literal["*"] | tuple[str, ...] = Field(...)
    pins: dict[str, str] = {}
    timeout: Duration | None = None  # overrides gateway call_timeout for this server
    log_arguments: bool = False  # audit arguments with secret-looking values masked

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
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    source: Path | None = None

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
    resolve = lambda value, field: _resolve_secrets(value, config, manifest.name, f"{path}: {field}")  # noqa: E731
    if manifest.url is not None:
        host = urlsplit(manifest.url).hostname or ""
        if not any(glob_matches(pattern, host) for pattern in config.upstream_hosts):
            raise ConfigError(f"{path}: url: host {host!r} is not in upstream_hosts of gateway.yaml")
    cwd = None
    if manifest.transport == "stdio":
        cwd = (base / manifest.cwd).resolve() if manifest.cwd else config.state_dir / "upstreams" / manifest.name
    return UpstreamSpec(
        name=manifest.name,
        owner=manifest.owner,
        transport=manifest.transport,
        isolation=manifest.isolation,
        tools=None if manifest.tools == "*" else frozenset(manifest.tools),
        pins=dict(manifest.pins),
        timeout=manifest.timeout or config.call_timeout,
        log_arguments=manifest.log_arguments,
        command=_command(manifest.command, base) if manifest.command else None,
        args=tuple(resolve(a, f"args[{i}]") for i, a in enumerate(manifest.args)),
        env={k: resolve(v, f"env.{k}") for k, v in manifest.env.items()},
        cwd=cwd,
        url=resolve(manifest.url, "url") if manifest.url else None,
        headers={k: resolve(v, f"headers.{k}") for k, v in manifest.headers.items()},
        source=path.resolve(),
    )


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
