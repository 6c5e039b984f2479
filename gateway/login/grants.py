"""POST /oauth/token for sign-ins: `authorization_code` and `refresh_token`; refresh tokens at /oauth/revoke.

A code is redeemed once, within its lifetime, by the client it was issued to, with the redirect URI it
was issued for, the PKCE verifier of its challenge (S256, checked with Authlib) and its resource; a
code presented again revokes the session it opened. The code opens the sign-in's one session; its
access tokens live at most `login.access_token_ttl` (15 min), and each refresh token is single-use:
the refresh issues a new one, and presenting a used one revokes the session (`refresh.reused`).
A refresh on a closed, revoked or expired session fails.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.audit.events import Event
from gateway.errors import AuthError
from gateway.login.clients import Client, digest
from gateway.login.flow import CODE_KIND, Login

if TYPE_CHECKING:
    from gateway.login.deps import LoginDeps

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"
REFRESH_KIND = "refresh"
CODE_SESSION_KIND = "code_session"  # which session a redeemed code opened (a replay revokes it)
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


class Grants:
    def __init__(self, deps: LoginDeps, login: Login) -> None:
        self.deps = deps
        self.login = login

    async def _refused(self, reason: str, client: Client | None, **fields: Any) -> AuthError:
        await self.deps.audit.emit(Event.LOGIN_FAILED, reason=reason, client_id=client.id if client else None, **fields)
        return AuthError(reason, error="invalid_grant")

    async def token(self, request: Request, form: dict[str, Any], scope_of: Any) -> Response:
        """Raises AuthError / OAuthError-compatible errors for the token endpoint to answer."""
        client = await self.login.clients.authenticate(request.headers.get("authorization"), form)
        remote = request.client.host if request.client else None
        if form.get("grant_type") == AUTHORIZATION_CODE:
            return await self._code(form, client, remote, scope_of)
        return await self._refresh(form, client, remote, scope_of)

    async def _code(self, form: dict[str, Any], client: Client, remote: str | None, scope_of: Any) -> Response:
        code = form.get("code")
        if not code:
            raise await self._refused("code is required", client)
        now = self.deps.clock()
        item = await self.deps.store.use_login_item(CODE_KIND, digest(code), now)
        if item is None:
            raise await self._refused("authorization code unknown or expired", client)
        data = item.data
        if item.used_at is not None:
            opened = await self.deps.store.get_login_item(CODE_SESSION_KIND, digest(code), now)
            if opened is not None:  # RFC 6749 §4.1.2: what a replayed code obtained is revoked
                await self.deps.sessions.end(
                    opened.data["sid"], "revoked", "authorization code replayed", actor="login"
                )
            raise await self._refused(
                "authorization code replayed", client, agent=data["agent"], on_behalf_of=data["human"]
            )
        if data["client_id"] != client.id:
            raise await self._refused("authorization code was issued to another client", client)
        if form.get("redirect_uri", data["redirect_uri"]) != data["redirect_uri"]:
            raise await self._refused("redirect_uri differs from the authorization request's", client)
        verifier = form.get("code_verifier")
        # Authlib is imported at the first code exchange: most gateways never sign anyone in, and its
        # import is 0.5 MB of every gateway's RSS (benchmarks/rss.py).
        from authlib.oauth2.rfc7636 import create_s256_code_challenge
        from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN

        if not isinstance(verifier, str) or not CODE_VERIFIER_PATTERN.match(verifier):
            raise await self._refused("code_verifier missing or malformed (PKCE)", client)
        if not hmac.compare_digest(create_s256_code_challenge(verifier), data["code_challenge"]):
            raise await self._refused("code_verifier does not match the code_challenge (PKCE)", client)
        resources = form.get("resource", [])
        if resources and resources != [data["resource"]]:
            raise await self._refused("resource differs from the authorization request's", client)
        ttl = self.login.settings.access_token_ttl
        session, token = await self.deps.sessions.open(
            data["agent"],
            on_behalf_of=data["human"],
            task=f"sign-in: {client.name}"[:256],
            via=AUTHORIZATION_CODE,
            remote_addr=remote,
            credential="interactive",
            token_ttl=ttl,
        )
        await self.deps.store.put_login_item(
            CODE_SESSION_KIND, digest(code), {"sid": session.sid}, now + 2 * self.login.settings.code_ttl, now
        )
        refresh = await self._new_refresh(
            session.sid, data["agent"], client.id, data["human"], data["resource"], session.max_expires_at
        )
        agent = await self.deps.agents.get(data["agent"])
        return self._answer(
            token, session.sid, min(ttl, session.expires_at - now), refresh, scope_of(agent.grant) if agent else ""
        )

    async def _new_refresh(
        self, sid: str, agent: str, client_id: str, human: str, resource: str, expires_at: float
    ) -> str:
        refresh = secrets.token_urlsafe(32)
        await self.deps.store.put_login_item(
            REFRESH_KIND,
            digest(refresh),
            {"sid": sid, "agent": agent, "client_id": client_id, "human": human, "resource": resource},
            expires_at,
            self.deps.clock(),
        )
        return refresh

    def _answer(self, token: str, sid: str, expires_in: float, refresh: str, scope: str) -> Response:
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": max(0, int(expires_in)),
            "refresh_token": refresh,
            "session_id": sid,
            "scope": scope,
        }
        return JSONResponse(body, headers=_NO_STORE)

    async def _refresh(self, form: dict[str, Any], client: Client, remote: str | None, scope_of: Any) -> Response:
        presented = form.get("refresh_token")
        if not presented:
            raise await self._refused("refresh_token is required", client)
        now = self.deps.clock()
        key = digest(presented)
        item = await self.deps.store.get_login_item(REFRESH_KIND, key, now)
        if item is None:
            raise await self._refused("refresh token unknown or expired", client)
        data = item.data
        if data["client_id"] != client.id:  # not consumed: another client cannot burn someone's token
            raise await self._refused("refresh token was issued to another client", client)
        resources = form.get("resource", [])
        if resources and resources != [data["resource"]]:
            raise await self._refused("resource differs from the sign-in's", client)
        used = await self.deps.store.use_login_item(REFRESH_KIND, key, now)
        identity = {"agent": data["agent"], "on_behalf_of": data["human"], "session": data["sid"]}
        if used is None:
            raise await self._refused("refresh token unknown or expired", client)
        if used.used_at is not None:
            await self.deps.sessions.end(data["sid"], "revoked", "refresh token reused", actor="login")
            await self.deps.audit.emit(
                Event.REFRESH_REUSED,
                durable=True,
                **identity,
                client_id=client.id,
                remote_addr=remote,
                first_used_at=used.used_at,
            )
            raise AuthError("refresh token already used: the session is revoked; sign in again", error="invalid_grant")
        ttl = self.login.settings.access_token_ttl
        try:
            session, token = await self.deps.sessions.reissue(
                data["sid"],
                data["agent"],
                via=REFRESH_TOKEN,
                token_ttl=ttl,
                remote_addr=remote,
                credential="interactive",
            )
        except AuthError as exc:
            raise await self._refused(exc.reason, client, **identity) from None
        refresh = await self._new_refresh(
            session.sid, data["agent"], client.id, data["human"], data["resource"], session.max_expires_at
        )
        await self.deps.audit.emit(
            Event.TOKEN_REFRESHED, durable=True, **identity, client_id=client.id, remote_addr=remote
        )
        agent = await self.deps.agents.get(data["agent"])
        return self._answer(
            token, session.sid, min(ttl, session.expires_at - now), refresh, scope_of(agent.grant) if agent else ""
        )

    async def revoke(self, form: dict[str, Any]) -> bool:
        """RFC 7009 for refresh tokens: holding one is enough to end its session. False: not a refresh token."""
        token = form.get("token")
        if not token:
            return False
        item = await self.deps.store.get_login_item(REFRESH_KIND, digest(token), self.deps.clock())
        if item is None:
            return False
        await self.deps.sessions.end(item.data["sid"], "closed", "closed", actor="refresh_token_holder")
        return True
