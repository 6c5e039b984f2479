"""The browser part of a sign-in: GET /oauth/authorize, GET /oauth/callback, POST /oauth/consent.

    client --authorize--> gateway --302--> IdP (the human signs in there)
    IdP --302 callback--> gateway: ID token verified; the (human, client) agent found or created
    gateway: consent page (unless remembered) --POST consent--> 302 to the client with code, state, iss

Errors before the client and its redirect URI are known (an unknown or untrusted client, a redirect
URI it does not list) are shown as a page and never redirected (RFC 6749 §4.1.2.1); later ones go back
to the client as `error` (with `state` and RFC 9207 `iss`). The sign-in in progress is a sealed,
HttpOnly, SameSite=Lax cookie scoped to /oauth, so it is bound to this browser; the IdP's `state` and
the consent form's CSRF token are compared with it in constant time.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.audit.events import Event
from gateway.config.files import InteractiveTemplate
from gateway.errors import Unavailable
from gateway.identity.idp import Human, IdentityProviders
from gateway.identity.sealing import InvalidEnvelope
from gateway.login import pages
from gateway.login.cimd import ClientRefused
from gateway.login.clients import NEVER, Client, Clients, digest
from gateway.login.identity import NotAllowed, agent_for, template_for
from gateway.login.rp import LoginFailed, RelyingParty

if TYPE_CHECKING:
    from gateway.identity.agents import Agent
    from gateway.login.deps import LoginDeps

log = logging.getLogger("gateway.login")

COOKIE = "gw_login"
CODE_KIND = "code"
CONSENT_KIND = "consent"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}\Z")  # base64url of a SHA-256, unpadded
_SINGLE = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "scope",
)


class AuthorizeError(Exception):
    """An error answered by redirecting back to the client."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def tool_scopes(templates: dict[str, InteractiveTemplate]) -> list[str]:
    """The scopes sign-ins may ask for: the tool patterns of the templates' grants."""
    return sorted({pattern for template in templates.values() for pattern in template.grant.tools})


class Login:
    def __init__(self, deps: LoginDeps, idps: IdentityProviders, resources: set[str]) -> None:
        config = deps.config
        assert config.login is not None and config.login_provider is not None
        self.deps = deps
        self.settings = config.login
        self.issuer = config.public_url
        self.resources = resources
        self.rp = RelyingParty(config.login_provider, idps, f"{config.public_url}/oauth/callback", deps.clock)
        self.clients = Clients(deps)
        self.sealer = deps.sealer
        self.secure = config.public_url.startswith("https:")

    async def close(self) -> None:
        await self.rp.close()
        await self.clients.close()

    # ------------------------------------------------------------ helpers

    async def _failed(self, reason: str, **fields: Any) -> None:
        await self.deps.audit.emit(Event.LOGIN_FAILED, reason=reason, **fields)

    def _cookie(self, response: Response, txn: dict[str, Any]) -> Response:
        now = self.deps.clock()
        value = self.sealer.seal({"purpose": "login", **txn}, now + self.settings.login_timeout)
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.settings.login_timeout),
            path="/oauth",
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )
        return response

    def _txn(self, request: Request) -> dict[str, Any] | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            txn = self.sealer.open(value, self.deps.clock())
        except InvalidEnvelope:
            return None
        return txn if txn.get("purpose") == "login" else None

    def _back(self, redirect_uri: str, params: dict[str, str | None]) -> Response:
        query = urlencode({k: v for k, v in {**params, "iss": self.issuer}.items() if v is not None})
        response = RedirectResponse(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}", status_code=302)
        response.delete_cookie(COOKIE, path="/oauth")
        response.headers["cache-control"] = "no-store"
        return response

    def _refuse(self, txn: dict[str, Any], error: str, description: str) -> Response:
        return self._back(
            txn["redirect_uri"], {"error": error, "error_description": description, "state": txn.get("state")}
        )

    # ------------------------------------------------------------ GET /oauth/authorize

    async def authorize(self, request: Request) -> Response:
        query = request.query_params
        repeated = [name for name in _SINGLE if len(query.getlist(name)) > 1]
        client_id = query.get("client_id", "")
        remote = request.client.host if request.client else None
        if repeated:
            await self._failed(f"parameter {repeated[0]} repeated", client_id=client_id, remote_addr=remote)
            return pages.error_page(f"The parameter {repeated[0]} appears more than once.")
        try:
            client = await self.clients.get(client_id)
        except ClientRefused as exc:
            await self._failed(exc.reason, client_id=client_id, remote_addr=remote)
            return pages.error_page(f"This application cannot sign in here: {exc.reason}.")
        redirect_uri = query.get("redirect_uri")
        if redirect_uri is None and len(client.metadata.redirect_uris) == 1:
            redirect_uri = client.metadata.redirect_uris[0]
        if redirect_uri not in client.metadata.redirect_uris:  # exact match, never a prefix
            await self._failed(
                "redirect_uri is not one the client lists",
                client_id=client.id,
                redirect_uri=redirect_uri,
                remote_addr=remote,
            )
            return pages.error_page("The application asked to return to an address it has not registered.")
        txn: dict[str, Any] = {"client_id": client.id, "redirect_uri": redirect_uri, "state": query.get("state")}
        try:
            txn.update(self._check(query, client))
        except AuthorizeError as exc:
            await self._failed(exc.description, client_id=client.id, remote_addr=remote)
            return self._refuse(txn, exc.error, exc.description)
        verifier = secrets.token_urlsafe(48)
        txn.update(
            idp_state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=verifier,
            csrf=secrets.token_urlsafe(24),
        )
        try:
            url = await self.rp.authorization_url(state=txn["idp_state"], nonce=txn["nonce"], verifier=verifier)
        except Unavailable as exc:
            await self._failed(str(exc), client_id=client.id, remote_addr=remote)
            return pages.error_page("The identity provider cannot be reached; try again later.", status=503)
        await self.deps.audit.emit(
            Event.LOGIN_STARTED,
            client_id=client.id,
            client_name=client.metadata.client_name,
            redirect_host=urlsplit(redirect_uri).hostname,
            template=txn["template"],
            resource=txn["resource"],
            remote_addr=remote,
        )
        return self._cookie(RedirectResponse(url, status_code=302), txn)

    def _check(self, query: Any, client: Client) -> dict[str, Any]:
        if query.get("response_type") != "code":
            raise AuthorizeError("unsupported_response_type", "response_type must be code")
        method, challenge = query.get("code_challenge_method"), query.get("code_challenge")
        if challenge is None or method is None:
            raise AuthorizeError("invalid_request", "PKCE is required: code_challenge with code_challenge_method S256")
        if method != "S256":
            raise AuthorizeError("invalid_request", "code_challenge_method must be S256 (plain is refused)")
        if not _CHALLENGE.fullmatch(challenge):
            raise AuthorizeError("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)")
        resource = query.get("resource") or self.issuer
        if resource not in self.resources:
            raise AuthorizeError("invalid_target", "resource is not served by this gateway")
        try:
            name, template = template_for(self.deps.agents.templates, client.id)
        except NotAllowed as exc:
            raise AuthorizeError("unauthorized_client", exc.reason) from None
        scope = query.get("scope")
        if scope:
            allowed = set(template.grant.tools)
            unknown = [s for s in scope.split() if s not in allowed]
            if unknown:
                raise AuthorizeError("invalid_scope", f"scope {unknown[0]!r} is not in this client's grant")
        return {"code_challenge": challenge, "resource": resource, "scope": scope, "template": name}

    # ------------------------------------------------------------ GET /oauth/callback

    async def callback(self, request: Request) -> Response:
        query = request.query_params
        txn = self._txn(request)
        remote = request.client.host if request.client else None
        if txn is None or "human" in txn:
            await self._failed("no sign-in in progress in this browser (cookie missing or expired)", remote_addr=remote)
            return pages.error_page(
                "No sign-in is in progress in this browser, or it took too long. Start again from your application."
            )
        where = {"client_id": txn["client_id"], "remote_addr": remote}
        if not hmac.compare_digest(query.get("state", ""), txn["idp_state"]):
            await self._failed("state mismatch at the callback", **where)
            return pages.error_page("This sign-in answer does not belong to the sign-in in progress.")
        if query.get("error"):
            reason = f"identity provider: {query.get('error')}"
            await self._failed(reason, **where)
            return self._refuse(txn, "access_denied", "the sign-in at the identity provider did not complete")
        try:
            human = await self.rp.redeem(query.get("code", ""), verifier=txn["verifier"], nonce=txn["nonce"])
        except LoginFailed as exc:
            await self._failed(exc.reason, **where)
            return self._refuse(txn, "access_denied", "the identity provider's answer could not be verified")
        except Unavailable as exc:
            await self._failed(str(exc), **where)
            return pages.error_page("The identity provider cannot be reached; try again later.", status=503)
        return await self._after_login(txn, human, where)

    async def _after_login(self, txn: dict[str, Any], human: Human, where: dict[str, Any]) -> Response:
        template = self.deps.agents.templates.get(txn["template"])
        try:
            client = await self.clients.get(txn["client_id"])
            if template is None:
                raise NotAllowed("the interactive template was removed")
            agent = await agent_for(self.deps, txn["template"], template, human, client)
        except (ClientRefused, NotAllowed) as exc:
            await self._failed(exc.reason, on_behalf_of=human.principal, **where)
            return self._refuse(txn, "access_denied", exc.reason)
        txn = {
            **txn,
            "human": {"issuer": human.issuer, "subject": human.subject, "email": human.email},
            "agent": agent.id,
        }
        if self.settings.consent == "once":
            remembered = await self.deps.store.get_login_item(
                CONSENT_KIND, self._consent_key(human, client, agent), self.deps.clock()
            )
            if remembered is not None:
                return await self._issue_code(txn, human, agent, remembered_consent=True)
        page = pages.consent_page(
            client_name=client.name,
            client_id=client.id,
            redirect_uri=txn["redirect_uri"],
            human=human.principal,
            agent=agent.id,
            grant=agent.grant,
            csrf=txn["csrf"],
        )
        return self._cookie(page, txn)

    def _consent_key(self, human: Human, client: Client, agent: Agent) -> str:
        return digest(f"{human.principal}\n{client.id}\n{agent.grant.version}")

    # ------------------------------------------------------------ POST /oauth/consent

    async def consent(self, request: Request, form: dict[str, Any]) -> Response:
        txn = self._txn(request)
        remote = request.client.host if request.client else None
        if txn is None or "human" not in txn:
            await self._failed("consent without a sign-in in progress", remote_addr=remote)
            return pages.error_page("No sign-in is in progress in this browser, or it took too long.")
        where = {"client_id": txn["client_id"], "remote_addr": remote}
        origin = request.headers.get("origin")
        expected = f"{urlsplit(self.issuer).scheme}://{urlsplit(self.issuer).netloc}"
        fetch_site = request.headers.get("sec-fetch-site", "same-origin")
        cross = (origin is not None and origin != expected) or fetch_site != "same-origin"
        if not hmac.compare_digest(str(form.get("csrf", "")), txn["csrf"]) or cross:
            await self._failed("consent CSRF check failed", **where)
            return pages.error_page("This consent answer did not come from the consent page.", status=403)
        human = Human(txn["human"]["issuer"], txn["human"]["subject"], txn["human"]["email"], None)
        if form.get("decision") != "approve":
            await self._failed("consent denied", on_behalf_of=human.principal, **where)
            return self._refuse(txn, "access_denied", "the person declined")
        agent = await self.deps.agents.get(txn["agent"], fresh=True)
        if agent is None or agent.disabled:
            await self._failed("the agent is disabled", on_behalf_of=human.principal, **where)
            return self._refuse(txn, "access_denied", "this agent is disabled")
        client = await self.clients.get(txn["client_id"])
        now = self.deps.clock()
        if self.settings.consent == "once":
            await self.deps.store.put_login_item(
                CONSENT_KIND,
                self._consent_key(human, client, agent),
                {"agent": agent.id, "grant": agent.grant.version, "at": now},
                NEVER,
                now,
            )
        await self.deps.audit.emit(
            Event.CONSENT_GRANTED,
            durable=True,
            agent=agent.id,
            owner=agent.owner,
            on_behalf_of=human.principal,
            client_id=client.id,
            grant=agent.grant.version,
            remembered=self.settings.consent == "once",
        )
        return await self._issue_code(txn, human, agent, remembered_consent=False)

    async def _issue_code(
        self, txn: dict[str, Any], human: Human, agent: Agent, *, remembered_consent: bool
    ) -> Response:
        code = secrets.token_urlsafe(32)
        now = self.deps.clock()
        data = {name: txn[name] for name in ("client_id", "redirect_uri", "code_challenge", "resource", "scope")}
        data.update(agent=agent.id, human=human.principal)
        await self.deps.store.put_login_item(CODE_KIND, digest(code), data, now + self.settings.code_ttl, now)
        await self.deps.audit.emit(
            Event.LOGIN_COMPLETED,
            durable=True,
            agent=agent.id,
            owner=agent.owner,
            on_behalf_of=human.principal,
            client_id=txn["client_id"],
            consent="remembered" if remembered_consent else "given",
        )
        return self._back(txn["redirect_uri"], {"code": code, "state": txn.get("state")})
