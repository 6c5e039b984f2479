"""Who is signed in to the console: a sealed, short-lived session cookie, its CSRF token, and sign-out.

The cookie holds an AES-GCM envelope (gateway/identity/sealing.py, under a key derived
for the console alone) with the operator's name, how they signed in, a random
session id and the CSRF token; never the admin token. It is `HttpOnly`,
`SameSite=Strict`, `Secure` (and `__Host-` named) when `public_url` is https,
and lives `SESSION_TTL` seconds. Every request re-checks it: a session opened
with the admin token ends when `admin_token` changes (its fingerprint is in the
envelope), one opened through the identity provider when its email leaves
`operators:`. Sign-out forgets the session id in this process; another replica
accepts the cookie until it expires (at most SESSION_TTL).

`start_session()` is the one place a session is made: the admin-token form
calls it, and so does the identity-provider sign-in with a verified email.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from starlette.requests import Request
from starlette.responses import Response

from gateway.config.files import glob_matches
from gateway.identity.sealing import InvalidEnvelope, Sealer

if TYPE_CHECKING:
    from gateway.console.deps import ConsoleDeps

SESSION_TTL = 1800.0  # seconds a console sign-in lasts
ADMIN = "admin"  # the operator name of an admin-token sign-in (actor console:admin)
Via = Literal["admin_token", "idp"]


@dataclass(frozen=True)
class Operator:
    """A signed-in operator."""

    who: str
    via: Via
    sid: str
    csrf: str
    expires_at: float

    @property
    def actor(self) -> str:
        return f"console:{self.who}"


def console_key(state_key: bytes) -> bytes:
    """The console's own sealing key, derived from the gateway's state secret (shared by replicas)."""
    return hmac.new(state_key, b"mcp-gateway console session v1", hashlib.sha256).digest()


def token_fingerprint(key: bytes, admin_token: str) -> str:
    return hmac.new(key, admin_token.encode(), hashlib.sha256).hexdigest()


def is_operator(operators: Sequence[str], email: str) -> bool:
    """Whether a verified email is in gateway.yaml `operators:` (email globs, case-insensitive)."""
    return any(glob_matches(entry.lower(), email.lower()) for entry in operators)


class ConsoleAuth:
    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        self._key = deps.console_key
        self._sealer = Sealer(self._key)
        self._signed_out: dict[str, float] = {}  # session id -> its expiry, so the list stays short
        https = deps.config.public_url.startswith("https://")
        self.secure = https
        self.cookie = "__Host-mcp_console" if https else "mcp_console"

    def start_session(self, response: Response, who: str, via: Via) -> Operator:
        """Sign `who` in (already verified: the admin token, or an operator email from the identity provider)."""
        now = self.deps.clock()
        operator = Operator(who, via, secrets.token_urlsafe(16), secrets.token_urlsafe(24), now + SESSION_TTL)
        payload = {"who": who, "via": via, "sid": operator.sid, "csrf": operator.csrf}
        if via == "admin_token":
            token = self.deps.config.admin_token
            if token is None:
                raise ValueError("no admin_token is configured")
            payload["tok"] = token_fingerprint(self._key, token)
        response.set_cookie(
            self.cookie,
            self._sealer.seal(payload, operator.expires_at),
            max_age=int(SESSION_TTL),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )
        return operator

    def end_session(self, response: Response, operator: Operator | None) -> None:
        if operator is not None:
            now = self.deps.clock()
            self._signed_out = {sid: exp for sid, exp in self._signed_out.items() if exp > now}
            self._signed_out[operator.sid] = operator.expires_at
        response.delete_cookie(self.cookie, path="/", secure=self.secure, httponly=True, samesite="strict")

    def signed_in(self, request: Request) -> Operator | None:
        """The operator this request's cookie names, if it is valid now."""
        value = request.cookies.get(self.cookie)
        if not value:
            return None
        try:
            payload = self._sealer.open(value, self.deps.clock())
        except InvalidEnvelope:
            return None
        who, via, sid, csrf = (payload.get(k) for k in ("who", "via", "sid", "csrf"))
        if not all(isinstance(v, str) and v for v in (who, via, sid, csrf)) or sid in self._signed_out:
            return None
        config = self.deps.config
        if via == "admin_token":
            token = config.admin_token
            if token is None or not hmac.compare_digest(
                str(payload.get("tok", "")), token_fingerprint(self._key, token)
            ):
                return None
        elif via == "idp":
            if not is_operator(config.operators, str(who)):
                return None
        else:
            return None
        return Operator(str(who), via, str(sid), str(csrf), float(payload["exp"]))

    def admin_token_matches(self, given: str) -> bool:
        token = self.deps.config.admin_token
        return token is not None and hmac.compare_digest(given.encode(), token.encode())


def csrf_matches(operator: Operator, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), operator.csrf.encode())
