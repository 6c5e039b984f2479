"""The RFC 8414 and RFC 9728 documents are complete (validated with Authlib), with and without login."""

from __future__ import annotations

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from tests.login.support import GRANT
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio

IDP = "http://127.0.0.1:9"  # never contacted: discovery happens at the first sign-in


def login(**clients: object) -> dict[str, object]:
    return {
        "login": {"identity_provider": IDP},
        "identity_providers": [
            {
                "issuer": IDP,
                "jwks_url": f"{IDP}/jwks",
                "audience": "mcp-gateway",
                "oidc": {"client_id": "gw", "client_secret": "s"},
            }
        ],
        "clients": {"metadata_documents": ["https://vscode.dev/oauth/*"], **clients},
    }


async def test_with_login_the_metadata_lists_every_sign_in_field_and_the_challenge_names_the_scopes(tmp_path):
    async with running_gateway(
        tmp_path,
        manifests=[time_manifest()],
        extra=login(dynamic_registration=True),
        interactive={"ide": {"clients": ["https://vscode.dev/oauth/*"], "users": ["*@example.com"], "grant": GRANT}},
    ) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            document = (await http.get("/.well-known/oauth-authorization-server")).json()
            AuthorizationServerMetadata(document).validate()
            assert document["authorization_endpoint"] == f"{gw.url}/oauth/authorize"
            assert document["registration_endpoint"] == f"{gw.url}/oauth/register"
            assert document["response_types_supported"] == ["code"]
            assert document["code_challenge_methods_supported"] == ["S256"]
            assert {"authorization_code", "refresh_token", "client_credentials"} <= set(
                document["grant_types_supported"]
            )
            assert "none" in document["token_endpoint_auth_methods_supported"]
            assert document["client_id_metadata_document_supported"] is True
            assert document["authorization_response_iss_parameter_supported"] is True
            assert document["scopes_supported"] == ["time.*"]
            resource = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
            assert resource["scopes_supported"] == ["time.*"]
            challenge = (await http.post("/mcp", json={})).headers["www-authenticate"]
            assert 'scope="time.*"' in challenge


async def test_without_login_authorize_is_listed_but_explains_that_sign_in_is_off(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            document = (await http.get("/.well-known/oauth-authorization-server")).json()
            AuthorizationServerMetadata(document).validate_issuer()
            assert document["authorization_endpoint"] == f"{gw.url}/oauth/authorize"
            assert (
                "registration_endpoint" not in document
                and "authorization_code" not in document["grant_types_supported"]
            )
            page = await http.get("/oauth/authorize?client_id=x")
            assert page.status_code == 404 and "Sign-in is not configured" in page.text
            refused = await http.post("/oauth/token", data={"grant_type": "authorization_code", "code": "x"})
            assert refused.status_code == 400 and refused.json()["error"] == "unsupported_grant_type"
            assert "scope=" not in (await http.post("/mcp", json={})).headers["www-authenticate"]
            assert (await http.post("/oauth/register", json={})).status_code in (404, 405)
