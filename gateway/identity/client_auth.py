"""OAuth client authentication of agents at the token and revocation endpoints.

Three methods, exactly one per request (RFC 6749 §2.3):
- `client_secret_basic`: `Authorization: Basic` with the form-urlencoded id and secret;
- `client_secret_post`: `client_id` and `client_secret` in the form;
- `private_key_jwt` (RFC 7523): a `client_assertion` signed with a key the agent
  registered (agents.yaml `jwks`, or the store), `iss` = `sub` = the agent,
  `aud` = this gateway's issuer, and a `jti` the store has never seen.

Every failure is `invalid_client` with a reason from a small fixed set, so
failed attempts aggregate well in the audit stream. The reason is for the audit
only: the endpoints answer every `invalid_client` alike, so a caller cannot tell
an unknown id from a wrong secret or a disabled agent. A secret is hashed and
compared even when the id is unknown or disabled, so the answer also takes as
long.

One refusal is told to the caller: a secret or key set older than its `credential_max_age`, judged
only after the credential has been verified (gateway/identity/lifecycle.py). A caller that proved it holds the
agent's credential learns nothing it did not know, and learns what to do: rotate it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from gateway.config.files import ASSERTION_ALGORITHMS, AgentLifecycle
from gateway.errors import AuthError
from gateway.identity import lifecycle
from gateway.identity.agents import Agent, AgentDirectory
from gateway.identity.credentials import verify_secret
from gateway.identity.jwks import select_key, token_header, unverified_claims, verify_jwt
from gateway.store.base import Store

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 3600.0  # seconds; bounds how long a jti must be remembered
INVALID = "invalid_client"


def _basic(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise AuthError("unsupported Authorization scheme for client authentication", error=INVALID)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials", error=INVALID) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise AuthError("malformed Basic credentials", error=INVALID)
    return unquote(client_id), unquote(secret)


def _usable(agent: Agent | None) -> Agent:
    if agent is None:
        raise AuthError("unknown client", error=INVALID)
    if agent.disabled:
        raise AuthError("client disabled", error=INVALID)
    return agent


class ClientAuthenticator:
    def __init__(
        self,
        agents: AgentDirectory,
        store: Store,
        credential_key: bytes,
        issuer: str,
        clock: Callable[[], float],
        defaults: Callable[[], AgentLifecycle] = AgentLifecycle,
    ) -> None:
        self.agents = agents
        self.store = store
        self.key = credential_key
        self.issuer = issuer
        self.clock = clock
        self.defaults = defaults  # gateway.yaml agent_defaults, read at each request (it reloads)

    def not_expired(self, agent: Agent, now: float, error: str = INVALID) -> lifecycle.Policy:
        """The agent's lifecycle, unless it has expired (the sweep that disables it may not have run yet).

        Raises:
            AuthError: `error` (`invalid_client`, or `invalid_grant` for a workload's JWT).
        """
        rules = lifecycle.policy(agent, self.defaults())
        if rules.expires is not None and now >= rules.expires:
            raise AuthError(f"client expired at {lifecycle.iso(rules.expires)}", error=error)
        return rules

    def _alive(self, agent: Agent, kind: lifecycle.Credential) -> Agent:
        """The verified agent, unless it has expired (the sweep may not have run yet) or its credential is too old.

        Raises:
            AuthError: `invalid_client`; for a too-old credential with a reason the caller is told.
        """
        now = self.clock()
        rules = self.not_expired(agent, now)
        stale = lifecycle.stale_refusal(agent, kind, rules.credential_max_age, now)
        if stale is not None:
            raise AuthError(stale, error=INVALID, disclose=True)
        return agent

    async def authenticate(self, authorization: str | None, form: Mapping[str, str]) -> Agent | None:
        """The authenticated agent, or None when the request presents no client credentials.

        Raises:
            AuthError: `invalid_request` for more than one method; `invalid_client` for bad credentials.
            StoreUnavailable: the store cannot be consulted.
        """
        presented = [
            method
            for method, present in (
                ("client_secret_basic", authorization is not None),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form or "client_assertion_type" in form),
            )
            if present
        ]
        if len(presented) > 1:
            raise AuthError("use exactly one client authentication method", error="invalid_request")
        if not presented:
            return None
        if presented[0] == "private_key_jwt":
            return await self._assertion(form)
        if authorization is not None:
            client_id, secret = _basic(authorization)
        else:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        found = await self._lookup(client_id, form)
        # Compared before the id is judged: an unknown id is compared with a dummy hash (verify_secret).
        matches = verify_secret(self.key, secret, found.secret_hash if found is not None else None)
        agent = _usable(found)
        if not matches:
            raise AuthError("wrong client secret", error=INVALID)
        return self._alive(agent, "secret")

    async def _agent(self, client_id: str, form: Mapping[str, str]) -> Agent:
        return _usable(await self._lookup(client_id, form))

    async def _lookup(self, client_id: str, form: Mapping[str, str]) -> Agent | None:
        if "client_id" in form and form["client_id"] != client_id:
            raise AuthError("client_id does not match the credentials", error=INVALID)
        return await self.agents.get(client_id, fresh=True) if client_id else None

    async def _assertion(self, form: Mapping[str, str]) -> Agent:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthError(f"client_assertion_type must be {ASSERTION_TYPE}", error=INVALID)
        assertion = form.get("client_assertion", "")
        claims = unverified_claims(assertion, error=INVALID)
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise AuthError("client assertion iss and sub must both be the client id", error=INVALID)
        agent = await self._agent(client_id, form)
        if not agent.jwks or not isinstance(agent.jwks.get("keys"), list):
            raise AuthError("client has no registered keys", error=INVALID)
        header = token_header(assertion, ASSERTION_ALGORITHMS, error=INVALID)
        key = select_key(agent.jwks["keys"], header, error=INVALID)
        now = self.clock()
        verified = verify_jwt(
            assertion,
            key,
            header["alg"],
            audience=self.issuer,
            issuer=client_id,
            now=now,
            require=("iss", "sub", "aud", "exp", "jti"),
            error=INVALID,
        )
        if verified["exp"] > now + MAX_ASSERTION_LIFETIME:
            raise AuthError("client assertion lives longer than an hour", error=INVALID)
        jti = verified["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("client assertion jti malformed", error=INVALID)
        if not await self.store.remember_jti(f"{client_id}|{jti}", float(verified["exp"]), now):
            raise AuthError("client assertion replayed", error=INVALID)
        return self._alive(agent, "private_key_jwt")
