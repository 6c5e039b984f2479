"""The gateway as an OAuth authorization server for its agents.

    POST /oauth/token       client_credentials (new session, or renewal with session_id),
                            RFC 8693 token exchange (on behalf of a human), and the RFC 7523
                            jwt-bearer grant: a workload JWT without client authentication
                            (workload.py), or an ID-JAG with it (on behalf of a human)
    POST /oauth/revoke      RFC 7009: ends the session a token belongs to
    POST /oauth/introspect  RFC 7662, for holders of the admin token

Every token issued opens (or renews) a session: the token is only a pointer to
it. With a valid `DPoP` proof (and `dpop` not off) the token is bound to the
proof's key and its type is DPoP; with `dpop: required` there is no token
without one. Requests are rate-limited per source address before anything else and per
client once authenticated; failed authentications go to the aggregated
`auth.failed` records. Errors are RFC 6749 §5.2 JSON bodies.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config.durations import parse_duration
from gateway.config.files import DpopMode
from gateway.errors import AuthError, Unavailable
from gateway.http.edge import AuthFailures
from gateway.http.ratelimit import RateLimiter
from gateway.identity.agents import Agent
from gateway.identity.client_auth import ClientAuthenticator
from gateway.identity.delegation import may_act_allows, may_delegate
from gateway.identity.dpop import INVALID as INVALID_DPOP
from gateway.identity.dpop import USE_NONCE, challenge
from gateway.identity.idp import IdentityProviders
from gateway.identity.policy import Grant
from gateway.identity.principal import Principal
from gateway.identity.workload import WorkloadIssuers
from gateway.login import pages as login_pages
from gateway.login.clients import REGISTERED_PREFIX
from gateway.login.flow import Login
from gateway.login.grants import AUTHORIZATION_CODE, REFRESH_TOKEN, Grants
from gateway.login.register import register

if TYPE_CHECKING:
    from gateway.config.live import LiveConfig
    from gateway.identity.dpop import DpopVerifier
    from gateway.login.deps import LoginDeps
    from gateway.telemetry import Off, Tracing

log = logging.getLogger("gateway.oauth")

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    ACCESS_TOKEN_TYPE,
)
_REPEATABLE = {"resource"}  # RFC 8707: the one parameter that may appear more than once
_MAX_BODY = 64 * 1024
_MAX_TASK = 256
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_STATUS = {"invalid_client": 401, "slow_down": 429, "temporarily_unavailable": 503}
# The one description of every invalid_client answer: the precise reason (unknown client, wrong secret,
# disabled, bad assertion) is the audit's alone, so the endpoint does not tell which agent ids exist.
CLIENT_AUTH_FAILED = "client authentication failed"


class OAuthError(Exception):
    """An RFC 6749 error answer."""

    def __init__(self, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.headers = headers or {}

    def response(self) -> Response:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=_STATUS.get(self.error, 400), headers={**_NO_STORE, **self.headers})


async def read_form(request: Request) -> dict[str, Any]:
    """An application/x-www-form-urlencoded body; parameters other than `resource` at most once.

    Raises:
        OAuthError: `invalid_request` naming what is wrong.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise OAuthError("invalid_request", "the body is larger than 64 KiB")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not valid form encoding") from None
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name in _REPEATABLE:
            form.setdefault(name, []).append(value)
        elif name in form:
            raise OAuthError("invalid_request", f"parameter {name!r} appears more than once")
        else:
            form[name] = value
    return form


def bearer_matches(request: Request, secret: str | None) -> bool:
    """`Authorization: Bearer <secret>`, compared in constant time; never true without a secret."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if secret is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), secret.encode())


async def admin_refusal(request: Request, admin_token: str | None, failures: AuthFailures) -> Response | None:
    """The 401 for a request without the admin token (recorded as a failed authentication), or None."""
    if bearer_matches(request, admin_token):
        return None
    await failures.failed(_remote(request), "admin token missing or wrong")
    if admin_token is None:
        description = (
            "admin token required, and none is configured: set admin_token in gateway.yaml "
            "(e.g. admin_token: ${env:GATEWAY_ADMIN_TOKEN}) and send it as Authorization: Bearer"
        )
    else:
        description = "admin token required: send gateway.yaml's admin_token as Authorization: Bearer"
    return JSONResponse(
        {"error": "invalid_token", "error_description": description},
        status_code=401,
        headers={"www-authenticate": 'Bearer realm="mcp-gateway-admin"'},
    )


def scope_of(grant: Grant) -> str:
    """The OAuth `scope` of a session: its grant's tool patterns (the grant, not the scope, is enforced)."""
    return " ".join(f"{server}.{tool}" for server, tool in grant.tools)


def _remote(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class OAuth:
    def __init__(
        self,
        live: LiveConfig,
        deps: LoginDeps,
        *,
        dpop: DpopVerifier,
        telemetry: Off | Tracing,
        failures: AuthFailures,
        servers: Iterable[str],
    ) -> None:
        self.live = live  # `admin_token` and `agent_defaults` reload
        config = self.config = deps.config
        self.store = deps.store
        self.sessions = deps.sessions
        self.clock = deps.clock
        self.dpop = dpop
        self.telemetry = telemetry
        self.failures = failures
        self.login_deps = deps
        self.clients = ClientAuthenticator(
            deps.agents,
            deps.store,
            deps.credential_key,
            config.public_url,
            deps.clock,
            lambda: live.current.agent_defaults,
        )
        self.idps = IdentityProviders(config.identity_providers, deps.clock)
        self.workloads = WorkloadIssuers(config.workload_issuers, deps.agents, deps.store, deps.clock)
        limits = config.oauth_rate_limit
        self.per_source = RateLimiter(limits.per_source, limits.window)
        self.per_client = RateLimiter(limits.per_client, limits.window)
        base = config.public_url
        self.resources = {base, f"{base}/mcp", *(f"{base}/servers/{name}/mcp" for name in servers)}
        self.login = Login(deps, self.idps, self.resources) if config.login is not None else None
        self.grants = Grants(deps, self.login) if self.login is not None else None

    async def close(self) -> None:
        await self.idps.close()
        if self.login is not None:
            await self.login.close()

    def routes(self) -> list[Route]:
        routes = [
            Route("/oauth/token", self._endpoint(self.telemetry.token_handler(self._token)), methods=["POST"]),
            Route("/oauth/revoke", self._endpoint(self._revoke), methods=["POST"]),
            Route("/oauth/introspect", self._endpoint(self._introspect), methods=["POST"]),
            Route("/oauth/authorize", self._page(self._authorize), methods=["GET"]),
        ]
        if self.login is not None:
            login = self.login
            routes += [
                Route("/oauth/callback", self._page(login.callback), methods=["GET"]),
                Route("/oauth/consent", self._page(self._consent), methods=["POST"]),
            ]
            if self.config.clients.dynamic_registration:
                routes.append(Route("/oauth/register", self._page(self._register), methods=["POST"]))
        return routes

    def _page(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """A sign-in endpoint a browser (or a registering client) reaches: rate-limited per source address."""

        async def endpoint(request: Request) -> Response:
            wait = self.per_source.acquire(_remote(request))
            if wait is not None:
                return login_pages.error_page("Too many requests; retry in a minute.", status=429)
            try:
                result: Response = await handler(request)
                return result
            except OAuthError as exc:
                return login_pages.error_page(exc.description)
            except Unavailable as exc:
                log.warning("sign-in: %s", exc)
                return login_pages.error_page("The gateway cannot complete the sign-in now; try again.", status=503)

        return endpoint

    async def _authorize(self, request: Request) -> Response:
        if self.login is None:
            return login_pages.error_page(
                "Sign-in is not configured on this gateway (gateway.yaml login:). Agents "
                "get tokens with client_credentials; ask the operator for one.",
                404,
            )
        return await self.login.authorize(request)

    async def _consent(self, request: Request) -> Response:
        assert self.login is not None
        return await self.login.consent(request, await read_form(request))

    async def _register(self, request: Request) -> Response:
        return await register(self.login_deps, request)

    def _endpoint(self, handler: Callable[[Request, dict[str, Any]], Any]) -> Callable[[Request], Any]:
        """Rate limit, parse, run; map every failure to its RFC 6749 answer."""

        async def endpoint(request: Request) -> Response:
            remote = _remote(request)
            try:
                self._limit(self.per_source, remote)
                result: Response = await handler(request, await read_form(request))
                return result
            except OAuthError as exc:
                return exc.response()
            except AuthError as exc:
                if exc.error in ("invalid_client", "invalid_grant", INVALID_DPOP):
                    await self.failures.failed(remote, exc.reason)
                if exc.error == USE_NONCE:  # RFC 9449 §8: the answer carries the nonce to use
                    return OAuthError(exc.error, exc.reason, self.dpop.nonce_header()).response()
                used_basic = request.headers.get("authorization", "").lower().startswith("basic ")
                challenge = exc.error == "invalid_client" and used_basic  # RFC 6749 §5.2
                headers = {"www-authenticate": 'Basic realm="mcp-gateway"'} if challenge else None
                description = CLIENT_AUTH_FAILED if exc.error == "invalid_client" and not exc.disclose else exc.reason
                return OAuthError(exc.error, description, headers).response()
            except Unavailable as exc:
                error = OAuthError("temporarily_unavailable", str(exc), {"retry-after": "1"})
                return error.response()

        return endpoint

    def _limit(self, limiter: RateLimiter, key: str) -> None:
        wait = limiter.acquire(key)
        if wait is not None:
            raise OAuthError("slow_down", "too many requests; retry later", {"retry-after": str(max(1, round(wait)))})

    async def _client(self, request: Request, form: dict[str, Any]) -> Agent | None:
        client = await self.clients.authenticate(request.headers.get("authorization"), form)
        if client is not None:
            self._limit(self.per_client, client.id)
        return client

    # ------------------------------------------------------------ token

    async def _token(self, request: Request, form: dict[str, Any]) -> Response:
        grant_type = form.get("grant_type")
        if grant_type in (AUTHORIZATION_CODE, REFRESH_TOKEN):  # sign-ins: their clients are not agents
            if self.grants is None:
                raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} needs login: in gateway.yaml")
            return await self.grants.token(request, form, scope_of)
        agent = await self._client(request, form)
        if agent is None and grant_type != JWT_BEARER:  # a jwt-bearer grant without a client is a workload's
            raise AuthError("client authentication required", error="invalid_client")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type not in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE, JWT_BEARER):
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        for resource in form.get("resource", []):
            if resource not in self.resources:
                raise OAuthError("invalid_target", f"resource {resource!r} is not served by this gateway")
        if form.get("audience", self.config.public_url) != self.config.public_url:
            raise OAuthError("invalid_target", "audience must be this gateway's public_url")
        ttl, task = _ttl(form.get("ttl")), form.get("task")
        if task is not None and (not task or len(task) > _MAX_TASK):
            raise OAuthError("invalid_request", f"task must be 1 to {_MAX_TASK} characters")
        remote = _remote(request)
        sessions = self.sessions
        extra: dict[str, Any] = {}
        credential = "private_key_jwt" if "client_assertion" in form else "secret"
        human: str | None = None
        if grant_type == JWT_BEARER:
            if form.get("session_id"):
                raise OAuthError("invalid_request", "session_id renews with grant_type=client_credentials")
            assertion = form.get("assertion")
            if not assertion:
                raise OAuthError("invalid_request", "assertion is required")
            if agent is None:
                agent, credential = await self.workloads.agent_for(assertion), "workload"
                self.clients.not_expired(agent, self.clock(), "invalid_grant")
                if form.get("client_id", agent.id) != agent.id:
                    raise AuthError("client_id is not the agent the workload JWT names", error="invalid_grant")
                self._limit(self.per_client, agent.id)
            else:
                human, credential = await self._id_jag(assertion, agent), "id_jag"
        if agent is None:  # only a workload's jwt-bearer grant comes without client authentication
            raise AuthError("client authentication required", error="invalid_client")
        jkt = await self._proof(request, agent.dpop)
        bound: dict[str, Any] = {"credential": credential, "jkt": jkt}
        if grant_type == CLIENT_CREDENTIALS and form.get("session_id"):
            session, token = await sessions.renew(
                form["session_id"], agent.id, ttl, via="renewal", remote_addr=remote, **bound
            )
        elif grant_type == CLIENT_CREDENTIALS:
            session, token = await sessions.open(
                agent.id, task=task, ttl=ttl, via=CLIENT_CREDENTIALS, remote_addr=remote, **bound
            )
        elif grant_type == JWT_BEARER:
            session, token = await sessions.open(
                agent.id, on_behalf_of=human, task=task, ttl=ttl, via=credential, remote_addr=remote, **bound
            )
        else:
            human = await self._subject(form, agent.id, agent.delegators)
            session, token = await sessions.open(
                agent.id, on_behalf_of=human, task=task, ttl=ttl, via="token_exchange", remote_addr=remote, **bound
            )
            extra["issued_token_type"] = ACCESS_TOKEN_TYPE
        # Last use, for disable_after_idle: once per token, never per call (calls update the session's last_seen,
        # which opening and renewing a session also set: this column is the agent's own record of it, so a
        # failure to write it costs nothing the token needs).
        try:
            await self.store.update_agent(agent.id, last_used=self.clock())
        except Unavailable as exc:
            log.warning("agent %s: last use not recorded: %s", agent.id, exc)
        body = {
            "access_token": token,
            "token_type": "DPoP" if jkt is not None else "Bearer",
            "expires_in": max(0, int(session.expires_at - self.clock())),
            "session_id": session.sid,
            "scope": scope_of(agent.grant),
            **extra,
        }
        return JSONResponse(body, headers={**_NO_STORE, **self.dpop.nonce_header()})

    async def _proof(self, request: Request, agent_mode: DpopMode | None) -> str | None:
        """The thumbprint of the key a valid DPoP proof on this token request names, if the token is to be bound.

        Raises:
            AuthError: (`invalid_dpop_proof`) a proof that does not verify, or none where one is required.
        """
        dpop = self.dpop
        mode = dpop.mode(agent_mode)
        proofs = request.headers.getlist("dpop")
        if mode == "off":
            return None  # RFC 9449 §5: a server without DPoP ignores the header and issues a Bearer token
        if not proofs:
            if mode == "required":
                raise AuthError("a DPoP proof is required for this agent's tokens", error=INVALID_DPOP)
            return None
        if len(proofs) > 1:
            raise AuthError("send exactly one DPoP proof", error=INVALID_DPOP)
        proof = await dpop.verify(proofs[0], method="POST", url=f"{self.config.public_url}/oauth/token")
        return proof.jkt

    async def _id_jag(self, assertion: str, agent: Agent) -> str:
        """The human an ID-JAG lets this (authenticated) agent act for, once the delegation rules allow it."""
        human, claims = await self.idps.verify_id_jag(assertion, self.config.public_url)
        if claims["client_id"] != agent.id:
            raise AuthError("ID-JAG client_id is not the authenticated client", error="invalid_grant")
        resource = claims.get("resource", [])
        targets = [resource] if isinstance(resource, str) else resource
        if not isinstance(targets, list) or any(target not in self.resources for target in targets):
            raise AuthError("ID-JAG resource is not served by this gateway", error="invalid_grant")
        if not may_delegate(agent.delegators, human):
            raise AuthError("this person may not delegate to this agent (delegators)", error="invalid_grant")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("ID-JAG jti malformed", error="invalid_grant")
        if not await self.store.remember_jti(f"id_jag|{human.issuer}|{jti}", float(claims["exp"]), self.clock()):
            raise AuthError("ID-JAG replayed (jti already used)", error="invalid_grant")
        return human.principal

    async def _subject(self, form: dict[str, Any], agent_id: str, delegators: tuple[str, ...]) -> str:
        """The human an exchange acts for, once the subject token and the delegation rules allow it."""
        if form.get("session_id"):
            raise OAuthError("invalid_request", "session_id renews with grant_type=client_credentials")
        if "actor_token" in form:
            raise OAuthError("invalid_request", "actor_token is not supported: the agent authenticates as the client")
        subject_token, token_type = form.get("subject_token"), form.get("subject_token_type")
        if not subject_token or not token_type:
            raise OAuthError("invalid_request", "subject_token and subject_token_type are required")
        if token_type not in SUBJECT_TOKEN_TYPES:
            raise OAuthError("invalid_request", f"subject_token_type {token_type!r} is not supported (JWTs only)")
        requested = form.get("requested_token_type", ACCESS_TOKEN_TYPE)
        if requested not in (ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:jwt"):
            raise OAuthError("invalid_request", f"requested_token_type {requested!r} is not supported")
        human = await self.idps.verify(subject_token)
        if not may_act_allows(human.may_act, agent_id):
            raise AuthError("the subject token's may_act does not name this agent", error="invalid_grant")
        if not may_delegate(delegators, human):
            raise AuthError("this person may not delegate to this agent (delegators)", error="invalid_grant")
        return human.principal

    # ------------------------------------------------------------ revoke, introspect

    async def _token_of(self, form: dict[str, Any]) -> Principal | None:
        """What the form's `token` stands for, or None when it is not a live session token."""
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        try:
            return await self.sessions.resolve(token)
        except AuthError:
            return None

    async def _revoke(self, request: Request, form: dict[str, Any]) -> Response:
        """RFC 7009. A client may revoke its own tokens; a request without client credentials may
        revoke the token it presents (holding it already grants using it), a sign-in's refresh token included."""
        if self.grants is not None and await self.grants.revoke(form):
            return Response(status_code=200, headers=_NO_STORE)
        if self.login is not None and _public_client(form):
            form = {k: v for k, v in form.items() if k != "client_id"}  # a sign-in client is not an agent
        client = await self._client(request, form)
        principal = await self._token_of(form)
        if principal is None:
            return Response(status_code=200, headers=_NO_STORE)  # unknown, invalid or already ended
        if client is not None and principal.agent.id != client.id:
            raise OAuthError("unauthorized_client", "the token was not issued to this client")
        if client is None and principal.token.jkt is not None:  # holding a bound token is not enough: prove the key
            refusal = await self._holder_proof(request, form["token"], principal.token.jkt)
            if refusal is not None:
                return refusal
        actor = f"client:{principal.agent.id}" if client is not None else "token_holder"
        await self.sessions.end(principal.sid, "closed", "closed", actor=actor)
        return Response(status_code=200, headers=_NO_STORE)

    async def _holder_proof(self, request: Request, token: str, jkt: str) -> Response | None:
        """None when the request carries a fresh DPoP proof by the key `token` is bound to, else the 401."""
        try:
            await self.dpop.verify_holder(
                request.headers.getlist("dpop"),
                method="POST",
                url=f"{self.config.public_url}/oauth/revoke",
                access_token=token,
                jkt=jkt,
            )
        except AuthError as exc:
            if exc.error != USE_NONCE:
                await self.failures.failed(_remote(request), exc.reason)
            return JSONResponse(
                {"error": exc.error, "error_description": exc.reason},
                status_code=401,
                headers={
                    **_NO_STORE,
                    **self.dpop.nonce_header(),
                    "www-authenticate": challenge(exc.reason, error=exc.error),
                },
            )
        return None

    async def _introspect(self, request: Request, form: dict[str, Any]) -> Response:
        """RFC 7662 for holders of the admin token: what a token stands for, if it is live."""
        refusal = await admin_refusal(request, self.live.current.admin_token, self.failures)
        if refusal is not None:
            return refusal
        principal = await self._token_of(form)
        if principal is None:
            return JSONResponse({"active": False}, headers=_NO_STORE)
        claims = principal.token.raw
        body: dict[str, Any] = {
            "active": True,
            "token_type": "DPoP" if principal.token.jkt is not None else "Bearer",
            "scope": scope_of(principal.grant),
            **{
                name: claims[name]
                for name in (
                    "iss",
                    "aud",
                    "sub",
                    "client_id",
                    "sid",
                    "jti",
                    "iat",
                    "exp",
                    "act",
                    "task",
                    "grant",
                    "cnf",
                )
                if name in claims
            },
            "session_state": principal.session.state,
        }
        return JSONResponse(body, headers=_NO_STORE)


def _public_client(form: dict[str, Any]) -> bool:
    """A revocation by a sign-in's public client: it names itself (a metadata URL or registration), no secret."""
    client_id = form.get("client_id", "")
    return "client_secret" not in form and (client_id.startswith(("https://", REGISTERED_PREFIX)))


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise OAuthError("invalid_request", f"ttl: {exc}") from None
