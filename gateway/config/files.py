"""gateway.yaml and agents.yaml -> validated, frozen models.

Relative paths resolve against the file that names them; `${env:VAR}` in
gateway.yaml reads the environment. A bad file stops startup with one line:
`<file>: <field>: <reason>`. Unknown fields are errors, never ignored.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.durations import Duration, Instant
from gateway.errors import ConfigError, ConfigNotFound

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
# Identifier patterns end in \Z, never $: `$` also matches before a trailing newline, so "rb\n" would pass.
# Use them with fullmatch all the same.
SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
# One @, something on each side; no whitespace and no control characters (C0, DEL, C1).
EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\Z")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- gateway.yaml


class Listen(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)


class AuditSettings(_Model):
    path: Path = Path("./.state/audit.jsonl")
    # always: a durable record (tool.call before forwarding, operator changes) returns once fsynced, sharing
    # the fsync with every record written meanwhile; batch: nothing waits, fsync at most every batch_interval
    fsync: Literal["always", "batch"] = "always"
    batch_interval: Duration = 0.005  # longest a written record waits for its fsync
    rotate_bytes: int = Field(104_857_600, gt=0)  # start a new file past this size
    rotate_interval: Duration | None = None  # also start a new file when the current one is this old (e.g. 1d)
    checkpoint_every: int = Field(1000, gt=0)  # records between signed checkpoints
    checkpoint_interval: Duration = 60.0  # seconds between signed checkpoints
    # denied requests recorded in full per agent per clock minute; past this they are counted into one
    # `denials.aggregated` record per session at the end of the minute (bounds a denied agent's audit volume)
    denials_per_minute: int = Field(60, gt=0)


class AgentLifecycle(_Model):
    """Non-human identity hygiene: when an agent stops, and how old its credential may get. None: never."""

    expires: Instant | None = None  # an ISO 8601 time or date (00:00 UTC): disabled then, its sessions revoked
    disable_after_idle: Duration | None = None  # disabled after this long without a token issued or a call made
    credential_max_age: Duration | None = None  # an older secret or registered key is refused at /oauth/token


LIFECYCLE_FIELDS = tuple(AgentLifecycle.model_fields)


class SessionDefaults(_Model):
    ttl: Duration = 3600.0
    idle_timeout: Duration = 900.0


ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
ASSERTION_ALGORITHMS = ("EdDSA", "ES256", "RS256")  # what an agent's private_key_jwt assertion may be signed with


class MeteringSettings(_Model):
    tokenizer: Literal["estimate", "bpe", "auto"] = "estimate"  # auto: bpe when it loads offline, else estimate
    encoding: str = "cl100k_base"  # the tiktoken encoding for bpe


class Price(_Model):
    """USD per million tokens of one model, for model usage reported without a cost."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class JwtIssuer(_Model):
    """An external issuer whose JWTs the gateway verifies against its published key set."""

    issuer: str  # matched exactly against the token's `iss`
    jwks_url: str  # https, or http on a loopback host; fetched asynchronously, redirects not followed
    audience: str  # the token's `aud` must contain it
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")  # asymmetric only; never taken from the token
    jwks_cache: Duration = 300.0  # how long a fetched key set is used before it is fetched again
    jwks_refresh_min: Duration = 10.0  # an unknown `kid` refetches at most this often

    @field_validator("jwks_url")
    @classmethod
    def _fetchable(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for algorithm in value:
            if algorithm not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"{algorithm!r} is not one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return value


class OidcClient(_Model):
    """The gateway as a confidential OpenID Connect relying party of an identity provider (human sign-in)."""

    client_id: str = Field(min_length=1)  # the gateway's client at the IdP; also the ID token's `aud`
    client_secret: str = Field(min_length=1, repr=False)  # client_secret_basic at the IdP's token endpoint
    scopes: tuple[str, ...] = ("openid", "email", "profile")  # must include openid
    # where the IdP's discovery document is; default <issuer>/.well-known/openid-configuration
    discovery_url: str | None = None

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("must include openid")
        return value

    @field_validator("discovery_url")
    @classmethod
    def _fetchable(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)


class IdentityProvider(JwtIssuer):
    """A humans' identity provider whose JWTs may be exchanged for delegated session tokens."""

    # true: it may also issue ID-JAGs (Identity Assertion JWT Authorization Grants) whose `aud` is this
    # gateway, which an agent presents with the jwt-bearer grant to act for the person they name
    id_jag: bool = False
    oidc: OidcClient | None = None  # humans sign in here for interactive agents (gateway.yaml `login`)


class LoginSettings(_Model):
    """Sign-in for interactive agents: the gateway as an OAuth 2.1 authorization server (authorization code
    + PKCE), humans proving who they are at `identity_provider` (an `identity_providers` entry with `oidc:`)."""

    identity_provider: str  # the issuer of that entry
    consent: Literal["once", "always"] = "once"  # once: remembered per (human, client, grant version)
    access_token_ttl: Duration = Field(900.0, gt=0, le=900)  # at most 15 minutes; refresh tokens renew them
    code_ttl: Duration = Field(60.0, gt=0, le=60)  # authorization codes live at most 60 s
    login_timeout: Duration = Field(600.0, gt=0)  # how long a sign-in at the IdP and the consent page may take


class CimdFetch(_Model):
    """Bounds on fetching a Client ID Metadata Document."""

    timeout: Duration = Field(5.0, gt=0)  # the whole fetch: connect, headers and body
    max_bytes: int = Field(5120, gt=0, le=1_048_576)  # a larger document is refused
    max_cache: Duration = Field(86400.0, ge=0)  # a document is reused per its Cache-Control max-age, at most this
    default_cache: Duration = Field(300.0, ge=0)  # how long a document without cache headers is reused
    ca_file: Path | None = None  # a PEM bundle trusted for these fetches instead of the system's (internal CAs)


class ClientsSettings(_Model):
    """Which interactive agent software (OAuth clients) may connect."""

    # URL globs a Client ID Metadata Document's URL must match (https only; a private or loopback address
    # only when a glob names that host literally, without wildcards)
    metadata_documents: tuple[str, ...] = ()
    dynamic_registration: bool = False  # RFC 7591 POST /oauth/register, for clients without a metadata document
    fetch: CimdFetch = CimdFetch()

    @field_validator("metadata_documents")
    @classmethod
    def _https_globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            parts = urlsplit(glob)
            if parts.scheme != "https" or not parts.netloc or parts.path in ("", "/"):
                raise ValueError(f"{glob!r} must be an https URL glob with a path, e.g. https://vscode.dev/oauth/*")
        return value


class WorkloadIssuer(JwtIssuer):
    """A platform issuing short-lived JWTs to workloads (Kubernetes service accounts, SPIFFE JWT-SVIDs).

    An agent whose agents.yaml `workload` names this issuer and a subject opens sessions with such a
    JWT (the jwt-bearer grant) instead of a stored secret.
    """


DpopMode = Literal["off", "optional", "required"]  # off: proofs ignored; required: no token without a proof


def _unique_issuers(value: tuple[JwtIssuer, ...]) -> tuple[JwtIssuer, ...]:
    issuers = [entry.issuer for entry in value]
    for issuer in issuers:
        if issuers.count(issuer) > 1:
            raise ValueError(f"issuer {issuer!r} is listed more than once")
    return value


class RateLimit(_Model):
    """Requests to /oauth/token, /oauth/revoke and /oauth/introspect allowed per window."""

    per_client: int = Field(60, gt=0)  # per authenticated agent
    per_source: int = Field(300, gt=0)  # per remote address, checked before authentication
    window: Duration = 60.0


class SharedCredentials(_Model):
    """One agent credential used from more distinct clients (remote address + MCP clientInfo) than expected."""

    max_fingerprints: int = Field(5, gt=0)  # distinct fingerprints per agent within `window`
    window: Duration = 300.0
    block: bool = False  # true: refuse requests from fingerprints beyond the limit (not only record them)


class Limits(_Model):
    """Bounds on the handshake-era MCP sessions (`Mcp-Session-Id`) one agent can hold open on this process.

    The SDK caps each endpoint at 10,000 sessions for everyone; these keep one agent from taking them all.
    """

    mcp_sessions_per_session: int = Field(16, gt=0)  # per agent session
    mcp_sessions_per_agent: int = Field(64, gt=0)  # per agent, across its sessions


class HttpSettings(_Model):
    """The HTTP server's own bounds on connections (uvicorn)."""

    keep_alive: Duration = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    header_timeout: Duration = Field(10.0, gt=0)  # a request head not complete this long after it began: closed
    max_connections: int = Field(1000, gt=0)  # open connections + requests in flight; beyond it, HTTP 503
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks). None by
    # default: the client address recorded in the audit is the TCP peer's, which no client can forge.
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:  # as uvicorn parses them: anything else it would take as a name no peer ever has
            try:
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (no host bits), e.g. 10.0.0.5 or 10.0.0.0/24"
                ) from None
        return value


class OcsfPushSettings(_Model):
    """The audit stream's OCSF events POSTed to an HTTP collector (JSON arrays), resumed from a cursor file."""

    url: str  # e.g. a SIEM's HTTP event collector endpoint
    headers: dict[str, str] = {}  # e.g. {"Authorization": "Splunk <token>"}: sent, never logged
    batch: int = Field(default=100, ge=1, le=10_000)  # events per POST

    @field_validator("url")
    @classmethod
    def _collector_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise ValueError("must be an absolute http(s) URL, e.g. https://siem.example.com:8088/services/collector")
        return value


class TelemetrySettings(_Model):
    """OpenTelemetry traces over OTLP/HTTP (the `otel` extra); off unless an endpoint is set here or in the
    standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables."""

    otlp_endpoint: str | None = None  # the collector's base URL, e.g. http://otel-collector:4318 (+ /v1/traces)
    ocsf: OcsfPushSettings | None = None  # push the audit stream's OCSF events to this HTTP collector

    @field_validator("otlp_endpoint")
    @classmethod
    def _collector_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be an absolute http(s) URL without query or fragment, e.g. http://collector:4318")
        return value.rstrip("/")


class GatewayConfig(_Model):
    """Static process settings (gateway.yaml). Every default is documented in README."""

    public_url: str
    listen: Listen = Listen()
    instance: str = Field(default_factory=lambda: os.uname().nodename)  # audit `gateway` field
    state_dir: Path = Path("./.state")
    work_dir: Path = Path("./.work")  # stdio servers' own directories, <work_dir>/<server>; never inside state_dir
    signing_key: Path = Path("./.state/signing.pem")
    secrets_dir: Path = Path("./secrets")
    upstream_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    store: str = "sqlite:///.state/gateway.db"
    audit: AuditSettings = AuditSettings()
    manifests: Path = Path("./tool_manifests")
    agents: Path = Path("./agents.yaml")
    admin_token: str | None = None
    metrics_public: bool = False
    operators: tuple[str, ...] = ()  # emails (globs) who may sign in to /console through `login`'s identity provider
    session_defaults: SessionDefaults = SessionDefaults()
    agent_defaults: AgentLifecycle = AgentLifecycle()  # each agent's lifecycle unless agents.yaml sets its own
    require_pins: bool = False
    identity_providers: tuple[IdentityProvider, ...] = ()
    workload_issuers: tuple[WorkloadIssuer, ...] = ()  # platforms whose workload JWTs open agent sessions
    dpop: DpopMode = "optional"  # RFC 9449 sender-constrained tokens; an agent's own `dpop` overrides it
    dpop_nonce: bool = False  # true: every DPoP proof must carry a fresh server nonce (DPoP-Nonce header)
    oauth_rate_limit: RateLimit = RateLimit()  # /oauth/* requests per client and per source address
    shared_credentials: SharedCredentials = SharedCredentials()  # credential.shared_suspected detection
    call_timeout: Duration = 60.0  # per upstream request
    allowed_origins: tuple[str, ...] = ()  # browser Origins accepted besides public_url's own
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted besides public_url's and listen's
    metering: MeteringSettings = MeteringSettings()  # how payload tokens are counted
    prices: dict[str, Price] = {}  # model name -> price, to cost POST /v1/usage reports that carry no cost_usd
    limits: Limits = Limits()  # MCP sessions per agent session and per agent
    http: HttpSettings = HttpSettings()  # keep-alive, request-head timeout, connection cap
    telemetry: TelemetrySettings = TelemetrySettings()  # OpenTelemetry traces; off by default
    login: LoginSettings | None = None  # sign-in for interactive agents (authorization code + PKCE); off if unset
    clients: ClientsSettings = ClientsSettings()  # interactive OAuth clients: metadata documents, registration

    @property
    def login_provider(self) -> IdentityProvider | None:
        """The identity provider humans sign in at, when `login` is configured."""
        if self.login is None:
            return None
        return next((p for p in self.identity_providers if p.issuer == self.login.identity_provider), None)

    @field_validator("public_url")
    @classmethod
    def _canonical_public_url(cls, value: str) -> str:
        parts = urlsplit(_http_url(value))
        if value.endswith("/") or parts.query or parts.fragment:
            raise ValueError("must be canonical: no trailing slash, query or fragment")
        return value

    @field_validator("identity_providers", "workload_issuers")
    @classmethod
    def _one_entry_per_issuer(cls, value: tuple[JwtIssuer, ...]) -> tuple[JwtIssuer, ...]:
        return _unique_issuers(value)

    @field_validator("operators")
    @classmethod
    def _operator_emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if "@" not in entry or any(c.isspace() for c in entry):
                raise ValueError(f"{entry!r}: each entry is an email address or an email glob (*@example.com)")
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @property
    def store_is_sqlite(self) -> bool:
        return self.store.startswith("sqlite:")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.store.removeprefix("sqlite://"))


def _http_url(value: str) -> str:
    """An absolute http(s) URL; plain http only for a loopback host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("plain http is allowed only for loopback hosts")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- agents.yaml


class ArgumentRule(_Model):
    """One argument's constraint. `pattern` is a full match and needs `max_length`."""

    enum: tuple[Any, ...] | None = None
    path_prefix: str | None = None
    pattern: str | None = None
    max_length: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _coherent(self) -> ArgumentRule:
        if self.enum is None and self.path_prefix is None and self.pattern is None and self.max_length is None:
            raise ValueError("a rule needs at least one of enum, path_prefix, pattern, max_length")
        if self.pattern is not None:
            if self.max_length is None:
                raise ValueError("pattern requires max_length")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise ValueError("path_prefix must be an absolute path")
        return self


def _check_tool_ref(ref: str, *, globs: bool) -> None:
    """Raises ValueError unless `ref` is server.tool (without `globs`: exactly one tool)."""
    server, dot, tool = ref.partition(".")
    well_formed = bool(dot and server and tool)
    if globs and not well_formed:
        raise ValueError(f"{ref!r} must be server.tool (globs allowed)")
    if not globs and (not well_formed or any(c in ref for c in "*?[")):
        raise ValueError(f"{ref!r} must name one tool as server.tool (no globs)")


class Budget(_Model):
    """Limits on an agent's spend. Unset means no limit. Applied at each call from the current grant."""

    session_tokens: int | None = Field(None, gt=0)  # metered tokens per session (tool payloads + model usage)
    session_calls: int | None = Field(None, gt=0)  # tool calls per session
    session_ttl: Duration | None = None  # a session's max lifetime (default: session_defaults.ttl)
    idle_timeout: Duration | None = None  # default: session_defaults.idle_timeout
    daily_tokens: int | None = Field(None, gt=0)  # per agent per UTC day, across its sessions
    max_active_sessions: int | None = Field(None, gt=0)  # live (active or suspended) sessions per agent
    calls_per_minute: int | None = Field(None, gt=0)  # per agent, per UTC clock minute; refusals, not stops
    loop_repeats: int | None = Field(None, gt=0)  # identical calls allowed within loop_window; one more blocks the tool
    loop_window: Duration = 60.0
    tool_calls: dict[str, int] = {}  # `server.tool` -> calls allowed per session

    @field_validator("tool_calls")
    @classmethod
    def _tool_caps(cls, value: dict[str, int]) -> dict[str, int]:
        for ref, cap in value.items():
            _check_tool_ref(ref, globs=False)
            if cap < 1:
                raise ValueError(f"{ref}: the cap must be a positive number of calls")
        return value


class GrantSpec(_Model):
    tools: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    arguments: dict[str, dict[str, ArgumentRule]] = {}
    budget: Budget = Budget()
    alerts: tuple[float, ...] = (0.5, 0.8, 1.0)

    @field_validator("tools")
    @classmethod
    def _tool_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ref in value:
            _check_tool_ref(ref, globs=True)
        return value

    @field_validator("arguments")
    @classmethod
    def _argument_refs(cls, value: dict[str, dict[str, ArgumentRule]]) -> dict[str, dict[str, ArgumentRule]]:
        for ref in value:
            _check_tool_ref(ref, globs=False)
        return value

    @field_validator("alerts")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < share <= 1 for share in value):
            raise ValueError("alert shares must be in (0, 1]")
        return tuple(sorted(value))


class Workload(_Model):
    """The platform identity an agent authenticates with: a `workload_issuers` issuer and the JWT's `sub`."""

    issuer: str
    subject: str = Field(min_length=1)  # e.g. system:serviceaccount:<ns>:<name>, or spiffe://<domain>/<path>


class AgentSpec(_Model):
    owner: str
    cost_center: str | None = None
    delegators: tuple[str, ...] = ()
    grant: GrantSpec = GrantSpec()
    jwks: dict[str, Any] | None = None  # public keys ({"keys": [JWK...]}) for private_key_jwt client authentication
    workload: Workload | None = None  # authenticates with its platform's JWT (jwt-bearer grant); no stored secret
    dpop: DpopMode | None = None  # overrides gateway.yaml `dpop` for this agent
    disabled: bool = False
    # Lifecycle, each overriding gateway.yaml `agent_defaults` when given (null included: "never" for this agent).
    expires: Instant | None = None
    disable_after_idle: Duration | None = None
    credential_max_age: Duration | None = None

    def lifecycle(self) -> dict[str, float | None]:
        """The lifecycle fields this agent sets itself (null included), to lay over the gateway's defaults."""
        return {name: getattr(self, name) for name in LIFECYCLE_FIELDS if name in self.model_fields_set}

    @field_validator("jwks")
    @classmethod
    def _public_key_set(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_public_jwks(value)
        return value

    @field_validator("owner")
    @classmethod
    def _email(cls, value: str) -> str:
        if not EMAIL.fullmatch(value):
            raise ValueError("must be an email address")
        return value


TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


class InteractiveTemplate(_Model):
    """An `interactive:` template: every (human, client) pair that signs in through it becomes its own agent,
    `<template>:<human>:<client host>`, owned by the human, with this grant."""

    clients: tuple[str, ...] = Field(min_length=1)  # client_id globs: metadata document URLs, or dcr-* (registered)
    users: tuple[str, ...] = Field(min_length=1)  # humans who may sign in: verified email globs, or "iss|sub"
    grant: GrantSpec = GrantSpec()
    cost_center: str | None = None


class AgentsFile(_Model):
    agents: dict[str, AgentSpec] = {}
    interactive: dict[str, InteractiveTemplate] = {}

    @field_validator("interactive")
    @classmethod
    def _template_names(cls, value: dict[str, InteractiveTemplate]) -> dict[str, InteractiveTemplate]:
        for name in value:
            if not TEMPLATE_NAME.fullmatch(name):
                raise ValueError(f"template name {name!r} must match {TEMPLATE_NAME.pattern}")
        return value

    @field_validator("agents")
    @classmethod
    def _ids(cls, value: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
        for agent_id in value:
            if not AGENT_ID.fullmatch(agent_id):
                raise ValueError(f"agent id {agent_id!r} must match {AGENT_ID.pattern}")
        return value


def check_public_jwks(value: Any) -> None:
    """A JWK Set of public signing keys, as agents register them for private_key_jwt.

    Raises:
        ValueError: not a {"keys": [...]} set of usable public keys.
    """
    from jwt import PyJWK, PyJWKError

    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('must be a JWK Set: {"keys": [...]}')
    for key in keys:
        if not isinstance(key, dict):
            raise ValueError("every key must be a JWK object")
        if any(private in key for private in ("d", "p", "q", "k")):
            raise ValueError("must hold public keys only (found private key material)")
        try:
            jwk = PyJWK(key)
        except (PyJWKError, ValueError, TypeError) as exc:
            raise ValueError(f"unusable key: {exc}") from None
        if jwk.algorithm_name not in ASSERTION_ALGORITHMS:
            raise ValueError(
                f"key algorithm {jwk.algorithm_name!r} is not accepted for client authentication "
                f"(use one of {', '.join(ASSERTION_ALGORITHMS)})"
            )


AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: see SERVER_NAME
# A sign-in's agent: <template>:<human (email, or iss|sub)>:<client host>; printable, no spaces
INTERACTIVE_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}:[\x21-\x7e]{1,400}:[A-Za-z0-9.-]{1,253}\Z")


# ---------------------------------------------------------------- loading


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, turning every failure into a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def validation_message(path: Path | str, exc: ValidationError) -> str:
    """`<file>: <field>: <reason>` for the first error pydantic found."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    reason = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        reason = "unknown field"
    return f"{path}: {field}: {reason}"


def _expand_env(value: Any, path: Path) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: ${{env:{name}}} is not set in the environment")
            return os.environ[name]

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, path) for v in value]
    return value


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read gateway.yaml, expand `${env:VAR}`, validate, and resolve relative paths.

    Raises:
        ConfigError: the file is missing, malformed, or a field is invalid.
    """
    if not path.is_file():
        raise ConfigNotFound(f"{path}: no such file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of settings")
    raw = _expand_env(raw, path)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None
    base = path.resolve().parent
    store = config.store
    if store.startswith("sqlite:///"):
        store = f"sqlite://{_resolve(base, Path(store.removeprefix('sqlite:///')))}"
    elif not store.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{path}: store: expected sqlite:///PATH or postgresql://...")
    config = config.model_copy(
        update={
            "state_dir": _resolve(base, config.state_dir),
            "work_dir": _resolve(base, config.work_dir),
            "signing_key": _resolve(base, config.signing_key),
            "secrets_dir": _resolve(base, config.secrets_dir),
            "manifests": _resolve(base, config.manifests),
            "agents": _resolve(base, config.agents),
            "audit": config.audit.model_copy(update={"path": _resolve(base, config.audit.path)}),
            "clients": _resolve_ca(base, config.clients),
            "store": store,
        }
    )
    _check_work_dir(path, config)
    return config


def _resolve_ca(base: Path, clients: ClientsSettings) -> ClientsSettings:
    if clients.fetch.ca_file is None:
        return clients
    fetch = clients.fetch.model_copy(update={"ca_file": _resolve(base, clients.fetch.ca_file)})
    return clients.model_copy(update={"fetch": fetch})


def gateway_files(config: GatewayConfig) -> list[tuple[Path, str]]:
    """What no tool server may ever reach: the gateway's state, keys, store, audit and secrets, by field."""
    files = [
        (config.state_dir, "state_dir"),
        (config.signing_key, "signing_key"),
        (config.audit.path, "audit.path"),
        (config.secrets_dir, "secrets_dir"),
    ]
    if config.store_is_sqlite:
        files.append((config.sqlite_path, "store"))
    return files


def _check_work_dir(path: Path, config: GatewayConfig) -> None:
    """The servers' own directories are granted to them, so they must hold nothing of the gateway's."""
    work = Path(os.path.realpath(config.work_dir))
    for other, name in gateway_files(config):
        real = Path(os.path.realpath(other))
        if real == work or work in real.parents or real in work.parents:
            raise ConfigError(
                f"{path}: work_dir: {config.work_dir} overlaps {name} ({other}); "
                "tool servers' directories must be apart from the gateway's files"
            )


def _agents_file(path: Path) -> AgentsFile:
    """Read agents.yaml; a missing or empty file is one with no agents and no templates.

    Raises:
        ConfigError: the file is malformed or a field is invalid.
    """
    raw = read_yaml(path) if path.exists() else None
    try:
        return AgentsFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None


def load_agents(path: Path) -> dict[str, AgentSpec]:
    """agents.yaml's configured agents (ConfigError as `_agents_file`)."""
    return _agents_file(path).agents


def load_templates(path: Path) -> dict[str, InteractiveTemplate]:
    """agents.yaml's `interactive:` templates (ConfigError as `_agents_file`)."""
    return _agents_file(path).interactive


def parse_grant(raw: Any, source: str = "grant") -> GrantSpec:
    """One grant, validated exactly as agents.yaml's `grant:` block is (the CLI and admin API use it too).

    Raises:
        ConfigError: `<source>: <field>: <reason>` for the first problem found.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of grant fields")
    try:
        return GrantSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(source, exc)) from None


def check_login(config: GatewayConfig) -> None:
    """`login.identity_provider` names an `identity_providers` entry that has `oidc:` settings.

    Raises:
        ConfigError: naming the field.
    """
    if config.login is None:
        return
    for provider in config.identity_providers:
        if provider.issuer == config.login.identity_provider:
            if provider.oidc is None:
                raise ConfigError(
                    f"login.identity_provider: {provider.issuer!r} has no oidc: settings "
                    "(client_id, client_secret) in identity_providers"
                )
            return
    raise ConfigError(
        f"login.identity_provider: {config.login.identity_provider!r} is not an identity_providers issuer"
    )


def check_workloads(config: GatewayConfig, agents: dict[str, AgentSpec]) -> None:
    """Every agent `workload` names a configured `workload_issuers` entry, and no two agents share one.

    Raises:
        ConfigError: `<agents.yaml>: agents.<id>.workload: <reason>`.
    """
    issuers = {entry.issuer for entry in config.workload_issuers}
    owners: dict[tuple[str, str], str] = {}
    for agent_id, spec in agents.items():
        if spec.workload is None:
            continue
        where = f"{config.agents}: agents.{agent_id}.workload"
        if spec.workload.issuer not in issuers:
            raise ConfigError(f"{where}: issuer {spec.workload.issuer!r} is not in gateway.yaml workload_issuers")
        key = (spec.workload.issuer, spec.workload.subject)
        if key in owners:
            raise ConfigError(f"{where}: the same issuer and subject as agent {owners[key]!r}")
        owners[key] = agent_id


def glob_matches(pattern: str, value: str) -> bool:
    """Case-sensitive shell-style glob match, used by grants and delegators alike."""
    return fnmatch.fnmatchcase(value, pattern)
