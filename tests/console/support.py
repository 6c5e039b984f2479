"""Helpers for the console's browser tests: Chromium from Debian under Playwright, sign-in, raw agent calls."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.support.harness import HEADERS, INIT, Harness

ADMIN_TOKEN = "console-test-admin-token-0123456789"
SHOTS = Path(__file__).with_name("screenshots")  # git-ignored: every page as the tests saw it
WAIT_MS = 15_000


def chromium() -> str:
    """Debian's chromium (CI installs it where missing); Playwright's own browser download is never used."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does it where missing)")


async def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def signed_in(browser: Browser, gw: Harness) -> tuple[BrowserContext, Page]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{gw.url}/console/login")
    await page.fill("input[name=token]", ADMIN_TOKEN)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{gw.url}/console/sessions", page.url
    return context, page


def _body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


class RawAgent:
    """An agent speaking streamable HTTP by hand (handshake era), so every status code can be read."""

    def __init__(self, gw: Harness, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=gw.url, timeout=20, headers={**HEADERS, "authorization": f"Bearer {token}"}
        )
        self.session = ""
        self._id = 1

    async def __aenter__(self) -> RawAgent:
        opened = await self.http.post("/mcp", json=INIT)
        assert opened.status_code == 200, opened.text
        self.session = opened.headers["mcp-session-id"]
        self.http.headers["mcp-session-id"] = self.session
        self.http.headers["mcp-protocol-version"] = "2025-11-25"
        await self.http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def call(
        self, tool: str = "time__get_current_time", arguments: dict[str, Any] | None = None
    ) -> httpx.Response:
        self._id += 1
        return await self.http.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": self._id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments if arguments is not None else {"timezone": "UTC"}},
            },
        )

    async def result(
        self, tool: str = "time__get_current_time", arguments: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await self.call(tool, arguments)
        assert response.status_code == 200, response.text
        body = _body(response)
        assert "result" in body, body
        return body["result"]
