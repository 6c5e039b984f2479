"""Who an OAuth client of the sign-in is: a metadata document (cimd.py) or a dynamic registration.

Registered clients' ids start with `dcr-` (so a template admits them with a `dcr-*` glob); their
secrets, for confidential ones, are stored only as HMAC-SHA-256 under the gateway's credential key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.audit.events import Event
from gateway.errors import AuthError
from gateway.identity.client_auth import _basic
from gateway.identity.credentials import verify_secret
from gateway.login.cimd import ClientMetadata, ClientRefused, MetadataFetcher, is_metadata_url, parse_metadata

if TYPE_CHECKING:
    from gateway.login.deps import LoginDeps

REGISTERED_PREFIX = "dcr-"
CLIENT_KIND = "client"
NEVER = 1e18  # expires_at of items that do not expire (registrations)


@dataclass(frozen=True)
class Client:
    metadata: ClientMetadata
    registered: bool  # True: a dynamic registration; False: a metadata document
    secret_hash: str | None = None  # confidential registered clients only

    @property
    def id(self) -> str:
        return self.metadata.client_id

    @property
    def name(self) -> str:
        return self.metadata.client_name or self.id

    @property
    def host(self) -> str:
        """What an interactive agent's id names the client by: a document's host, a registration's id."""
        return self.id if self.registered else (urlsplit(self.id).hostname or self.id)

    @property
    def auth_method(self) -> str:
        return self.metadata.token_endpoint_auth_method


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class Clients:
    def __init__(self, deps: LoginDeps) -> None:
        self.deps = deps
        self.fetcher = MetadataFetcher(deps.config.clients, deps.clock)

    async def close(self) -> None:
        await self.fetcher.close()

    async def get(self, client_id: str) -> Client:
        """The client `client_id` names.

        Raises:
            ClientRefused: unknown, untrusted, or its document could not be used (audited for documents).
            StoreUnavailable: registrations cannot be read.
        """
        if not client_id or len(client_id) > 2000:
            raise ClientRefused("client_id is missing or too long")
        if client_id.startswith(REGISTERED_PREFIX):
            item = await self.deps.store.get_login_item(CLIENT_KIND, client_id, self.deps.clock())
            if item is None:
                raise ClientRefused("client_id is not a registered client")
            data: dict[str, Any] = item.data
            metadata = parse_metadata({**data, "token_endpoint_auth_method": "none"}, client_id)
            method = data.get("token_endpoint_auth_method", "none")
            metadata = ClientMetadata(metadata.client_id, metadata.client_name, metadata.redirect_uris, method)
            return Client(metadata, True, data.get("secret_hash"))
        if not is_metadata_url(client_id):
            raise ClientRefused("client_id is neither a metadata document URL (https) nor a registered client")
        try:
            metadata, fetched = await self.fetcher.get(client_id)
        except ClientRefused as exc:
            await self.deps.audit.emit(Event.CLIENT_METADATA_FAILED, client_id=client_id, reason=exc.reason)
            raise
        if fetched:
            await self.deps.audit.emit(
                Event.CLIENT_METADATA_FETCHED,
                client_id=client_id,
                client_name=metadata.client_name,
                redirect_uris=list(metadata.redirect_uris),
            )
        return Client(metadata, False)

    async def authenticate(self, authorization: str | None, form: dict[str, Any]) -> Client:
        """The client a token request comes from: a public client names itself with `client_id`; a
        confidential registered client authenticates with client_secret_basic or client_secret_post.

        Raises:
            AuthError: (`invalid_client`) unknown client, missing or wrong secret, a method it did not register.
        """
        secret: str | None = None
        if authorization is not None:
            client_id, secret = _basic(authorization)
            if form.get("client_id", client_id) != client_id:
                raise AuthError("client_id differs from the authenticated client", error="invalid_client")
            method = "client_secret_basic"
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret")
            method = "client_secret_post" if secret is not None else "none"
        try:
            client = await self.get(client_id)
        except ClientRefused as exc:
            raise AuthError(exc.reason, error="invalid_client") from None
        if method != client.auth_method:
            raise AuthError(
                f"this client authenticates with {client.auth_method}, not {method}", error="invalid_client"
            )
        if method != "none" and not verify_secret(self.deps.credential_key, secret or "", client.secret_hash):
            raise AuthError("wrong client secret", error="invalid_client")
        return client
