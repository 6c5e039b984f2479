"""RFC 7591 dynamic client registration, for interactive clients without a metadata document.

Only with `clients.dynamic_registration: true`. A registration names redirect URIs (https, loopback
http, or a private-use scheme) and how the client authenticates at the token endpoint: `none` (a
public client, PKCE) or a client secret the gateway generates and shows once. Registered ids start
with `dcr-`; an `interactive:` template admits them with a `dcr-*` glob. Audited as
`client.registered`.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.audit.events import Event
from gateway.identity.credentials import generate_secret, hash_secret
from gateway.login.cimd import valid_redirect_uri
from gateway.login.clients import CLIENT_KIND, NEVER, REGISTERED_PREFIX

if TYPE_CHECKING:
    from gateway.login.deps import LoginDeps

_MAX_BODY = 64 * 1024
_METHODS = ("none", "client_secret_basic", "client_secret_post")
_GRANTS = {"authorization_code", "refresh_token"}


def _refusal(error: str, description: str) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=400, headers={"cache-control": "no-store"}
    )


async def register(deps: LoginDeps, request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return _refusal("invalid_client_metadata", "the registration is larger than 64 KiB")
    try:
        metadata = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return _refusal("invalid_client_metadata", "the registration must be a JSON object")
    if not isinstance(metadata, dict):
        return _refusal("invalid_client_metadata", "the registration must be a JSON object")
    uris = metadata.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and valid_redirect_uri(u) for u in uris):
        return _refusal(
            "invalid_redirect_uri",
            "redirect_uris must be a non-empty list of https, loopback http or "
            "private-use-scheme URIs without fragments",
        )
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in _METHODS:
        return _refusal("invalid_client_metadata", f"token_endpoint_auth_method must be one of {', '.join(_METHODS)}")
    grants = metadata.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or not set(grants) <= _GRANTS:
        return _refusal("invalid_client_metadata", "grant_types may be authorization_code and refresh_token")
    if metadata.get("response_types", ["code"]) != ["code"]:
        return _refusal("invalid_client_metadata", 'response_types must be ["code"]')
    name = metadata.get("client_name")
    name = name[:200] if isinstance(name, str) and name else None
    client_id = f"{REGISTERED_PREFIX}{secrets.token_hex(12)}"
    now = deps.clock()
    secret = generate_secret() if method != "none" else None
    record: dict[str, Any] = {
        "client_id": client_id,
        "client_name": name,
        "redirect_uris": uris,
        "token_endpoint_auth_method": method,
        "registered_at": now,
    }
    if secret is not None:
        record["secret_hash"] = hash_secret(deps.credential_key, secret)
    await deps.store.put_login_item(CLIENT_KIND, client_id, record, NEVER, now)
    remote = request.client.host if request.client else None
    await deps.audit.emit(
        Event.CLIENT_REGISTERED,
        durable=True,
        client_id=client_id,
        client_name=name,
        redirect_uris=uris,
        token_endpoint_auth_method=method,
        remote_addr=remote,
    )
    answer: dict[str, Any] = {
        "client_id": client_id,
        "client_id_issued_at": int(now),
        "redirect_uris": uris,
        "token_endpoint_auth_method": method,
        "grant_types": sorted(set(grants) | {"authorization_code"}),
        "response_types": ["code"],
    }
    if name is not None:
        answer["client_name"] = name
    if secret is not None:
        answer.update(client_secret=secret, client_secret_expires_at=0)
    return JSONResponse(answer, status_code=201, headers={"cache-control": "no-store"})
