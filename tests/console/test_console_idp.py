"""Operators sign in to the console through the company's identity provider (the real oidc-provider, Chromium)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser

from tests.console.support import WAIT_MS, screenshot
from tests.login.support import IDP_SECRET, PASSWORD, identity_provider
from tests.support.harness import free_port, running_gateway, time_manifest

pytestmark = pytest.mark.anyio


def idp_extra(issuer: str) -> dict[str, object]:
    return {
        "login": {"identity_provider": issuer},
        "identity_providers": [
            {
                "issuer": issuer,
                "jwks_url": f"{issuer}/jwks",
                "audience": "mcp-gateway",
                "algorithms": ["RS256"],
                "oidc": {"client_id": "mcp-gateway", "client_secret": IDP_SECRET},
            }
        ],
        "operators": ["alice@example.com"],
    }


async def test_an_operator_signs_in_at_the_identity_provider_and_anyone_else_is_refused(
    tmp_path: Path, browser: Browser
) -> None:
    port = free_port()
    async with (
        identity_provider(f"http://127.0.0.1:{port}/oauth/callback") as issuer,
        running_gateway(tmp_path, manifests=[time_manifest()], port=port, extra=idp_extra(issuer)) as gw,
    ):

        async def sign_in(email: str) -> tuple[object, str]:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(f"{gw.url}/console/login")
            await page.click("#idp-sign-in")
            await page.fill("#email", email)
            await page.fill("#password", PASSWORD)
            await page.click("#submit")
            return context, page

        context, page = await sign_in("alice@example.com")
        try:
            await page.wait_for_url(f"{gw.url}/console/sessions", timeout=WAIT_MS)
        except Exception:
            raise AssertionError(f"stopped at {page.url}: {(await page.locator('main').inner_text())[:400]}") from None
        assert "console:alice@example.com" in await page.locator("header").inner_text()
        await screenshot(page, "idp-signed-in")
        cookies = {c["name"]: c for c in await context.cookies()}  # type: ignore[attr-defined]
        assert cookies["mcp_console"]["httpOnly"] and cookies["mcp_console"]["sameSite"] == "Strict"
        assert "mcp_console_idp" not in cookies  # the sign-in in progress is gone once it completed
        signed = [r for r in gw.audit("console.signed_in") if r.get("via") == "idp"]
        assert [(r["actor"], r["on_behalf_of"]) for r in signed] == [("console:alice@example.com", "alice@example.com")]

        context, page = await sign_in("bob@example.com")  # a verified human, but not in operators:
        await page.locator("[role=alert]").wait_for(timeout=WAIT_MS)
        assert "bob@example.com is not an operator of this gateway" in await page.locator("[role=alert]").inner_text()
        assert "mcp_console" not in {c["name"] for c in await context.cookies()}  # type: ignore[attr-defined]
        assert page.url.startswith(f"{gw.url}/console/callback")

        async with httpx.AsyncClient(base_url=gw.url) as http:  # a callback this browser never started
            forged = await http.get("/console/callback", params={"state": "forged", "code": "stolen"})
            assert forged.status_code == 400 and "did not start in this browser" in forged.text
            assert "mcp_console" not in forged.cookies
            assert (await http.get("/console/sessions", follow_redirects=False)).status_code in (303, 401)
