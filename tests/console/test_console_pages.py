"""The operator console in a real browser (Debian's Chromium under Playwright) against a real gateway.

One gateway serves the module (real time server over stdio); each test signs in its own browser context
and works on its own agents, so the tests do not see each other's sessions.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from playwright.async_api import expect

from tests.console.support import ADMIN_TOKEN, WAIT_MS, RawAgent, screenshot, signed_in
from tests.pins.support import mcp_gateway
from tests.support.harness import HEADERS, INIT, Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

AGENTS = {
    "alice-bot": {"owner": "alice@example.com", "cost_center": "research", "grant": {"tools": ["time.*"]}},
    "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["time.*"], "budget": {"session_calls": 2}}},
    "carol-bot": {"owner": "carol@example.com", "grant": {"tools": ["time.*"]}},
    "erin-bot": {"owner": "erin@example.com", "grant": {"tools": ["time.*"]}},
}
PAGES = ("/console", "/console/sessions", "/console/agents", "/console/spend", "/console/audit", "/console/tools")
XSS_TASK = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_gateway(
        tmp_path_factory.mktemp("console"),
        manifests=[time_manifest()],
        agents=AGENTS,
        extra={"admin_token": ADMIN_TOKEN},
    ) as gw:
        yield gw


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def test_only_the_admin_token_signs_in_and_a_signed_out_browser_reaches_no_page_or_action(gw, browser):
    context = await browser.new_context()
    page = await context.new_page()
    for path in PAGES:
        await page.goto(f"{gw.url}{path}")
        assert page.url == f"{gw.url}/console/login", path
    await screenshot(page, "login")
    for action in (
        "/console/sessions/x/revoke",
        "/console/agents/alice-bot/disable",
        "/console/audit/verify",
        "/console/tools/time/approve",
        "/console/logout",
    ):
        status = await page.evaluate(
            "async (u) => (await fetch(u, {method: 'POST', body: new URLSearchParams({csrf: 'x'})})).status", action
        )
        assert status == 401, action
    async with gw.http() as http:
        for path in ("/console/sessions/live", "/console/audit/live"):
            assert (await http.get(path, headers={"accept": "text/event-stream"})).status_code == 401
        assert (await http.get("/console/spend/export?format=json")).status_code == 303
        # The right token, but posted from another origin (login CSRF) or to a Host this gateway does not serve.
        foreign = await http.post(
            "/console/login", data={"token": ADMIN_TOKEN}, headers={"origin": "http://attacker.example"}
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        rebound = await http.get("/console/login", headers={"host": "attacker.example"})
        assert rebound.status_code == 421

    await page.fill("input[name=token]", "not-the-admin-token-at-all")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_have_text("That is not the admin token.")
    assert await context.cookies() == []

    await page.fill("input[name=token]", ADMIN_TOKEN)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{gw.url}/console/sessions"
    [cookie] = await context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "mcp_console",
        True,
        "Strict",
        "/",
    )
    assert cookie["secure"] is False  # plain-http loopback gateway; https sets Secure (test_console_auth.py)
    assert time.time() < cookie["expires"] <= time.time() + 1800 + 5
    assert ADMIN_TOKEN not in cookie["value"]
    assert await page.evaluate("() => document.cookie") == ""  # HttpOnly: no script can read it
    signed_in_record = gw.audit("console.signed_in")[-1]
    assert signed_in_record["actor"] == "console:admin"

    async with page.expect_navigation():
        await page.click("header .signout button")
    assert page.url == f"{gw.url}/console/login"
    assert gw.audit("console.signed_out")[-1]["actor"] == "console:admin"
    replayed = await browser.new_context()
    await replayed.add_cookies([cookie])  # the cookie from before sign-out, presented again
    again = await replayed.new_page()
    await again.goto(f"{gw.url}/console/sessions")
    assert again.url == f"{gw.url}/console/login"
    await replayed.close()
    await context.close()


async def test_sessions_appear_live_revoke_stops_the_next_call_and_resume_lifts_a_budget_stop(gw, browser):
    context, page = await signed_in(browser, gw)
    await page.goto(f"{gw.url}/console/sessions?state=live")
    await page.evaluate("() => { window.__loaded_once = true }")  # gone if the page reloads
    rows = page.locator("#session-rows")
    alice_token = await gw.open_session("alice-bot", task="nightly digest")
    bob_token = await gw.open_session("bob-bot", task="triage")
    async with RawAgent(gw, alice_token) as alice, RawAgent(gw, bob_token) as bob:
        assert not (await alice.result())["isError"]
        assert not (await bob.result())["isError"]
        alice_row = rows.locator("tr[data-agent=alice-bot]")
        bob_row = rows.locator("tr[data-agent=bob-bot]")
        await expect(alice_row.locator("td.calls")).to_have_text("1", timeout=WAIT_MS)
        await expect(bob_row.locator("td.calls")).to_have_text("1 / 2", timeout=WAIT_MS)
        await expect(alice_row.locator("td.task")).to_have_text("nightly digest")
        assert await page.evaluate("() => window.__loaded_once") is True  # updated in place, never reloaded
        await screenshot(page, "sessions")

        async with page.expect_navigation():
            await alice_row.locator("button[name=revoke]").click()
        refused = await alice.call()  # the very next call, right after the console's answer
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        [revoked] = [r for r in gw.audit("session.closed") if r["agent"] == "alice-bot"]
        assert (revoked["state"], revoked["actor"]) == ("revoked", "console:admin")

        assert not (await bob.result())["isError"]
        stopped = await bob.result()  # past session_calls: 2
        assert stopped["isError"] and stopped["content"][0]["text"].startswith("STOP:")
        bob_row = page.locator("#session-rows tr[data-agent=bob-bot]")
        await expect(bob_row.locator("td.state")).to_contain_text("suspended", timeout=WAIT_MS)
        await bob_row.locator("input[name=add_calls]").fill("3")
        async with page.expect_navigation():
            await bob_row.locator("button[name=resume]").click()
        assert not (await bob.result())["isError"]
        resumed = gw.audit("session.resumed")[-1]
        assert (resumed["agent"], resumed["add_calls"], resumed["actor"]) == ("bob-bot", 3, "console:admin")
        await expect(page.locator("#session-rows tr[data-agent=bob-bot] td.state")).to_have_text(
            "active", timeout=WAIT_MS
        )

        async with page.expect_navigation():
            await page.locator("#session-rows tr[data-agent=bob-bot] button[name=revoke-agent]").click()
        assert (await bob.call()).status_code == 401
    await context.close()


async def test_spend_shows_the_same_totals_as_the_report_for_the_same_window(gw, browser):
    token = await gw.open_session("erin-bot", task="spend check")
    async with RawAgent(gw, token) as erin:
        for _ in range(3):
            await erin.result()
    since, until = _iso(time.time() - 3600), _iso(time.time() + 60)
    context, page = await signed_in(browser, gw)
    await page.goto(f"{gw.url}/console/spend?since={since}&until={until}")
    shown = {
        metric: await cell.inner_text()
        for cell in await page.locator("#totals td[data-metric]").all()
        if (metric := await cell.get_attribute("data-metric"))
    }
    await screenshot(page, "spend")
    cli = await mcp_gateway(gw.root, "report", "--format", "json", "--since", since, "--until", until)
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["totals"]["calls"] >= 3 and report["totals"]["response_tokens"] > 0
    assert shown == {metric: str(value) for metric, value in report["totals"].items()}
    assert await page.locator("#evidence td[data-evidence=actions]").inner_text() == str(report["evidence"]["actions"])
    download = await context.request.get(f"{gw.url}/console/spend/export?format=json&since={since}&until={until}")
    assert download.ok and json.loads(await download.text())["totals"] == report["totals"]
    for fmt in ("csv", "html", "focus"):
        exported = await context.request.get(f"{gw.url}/console/spend/export?format={fmt}&since={since}")
        assert exported.ok and "attachment" in exported.headers["content-disposition"], fmt
    await context.close()


async def test_the_audit_tail_follows_live_with_filters_and_shows_the_verified_chain(gw, browser):
    token = await gw.open_session("carol-bot", task="audit tail")
    context, page = await signed_in(browser, gw)
    await page.goto(f"{gw.url}/console/audit?agent=carol-bot&event=tool.*")
    tail = page.locator("#audit-tail")
    await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    before = await tail.locator("li").count()
    async with RawAgent(gw, token) as carol:
        await carol.result()
    await expect(tail.locator("li[data-event='tool.result']")).to_have_count(1, timeout=WAIT_MS)
    lines = await tail.locator("li").all_inner_texts()
    assert len(lines) == before + 2
    assert all("agent=carol-bot" in line and " tool." in line for line in lines)
    assert "tool.call" in lines[-2] and "tool=time.get_current_time" in lines[-2]

    async with page.expect_navigation():
        await page.click("button[name=verify]")
    await expect(page.locator("#chain-state")).to_have_text("intact")
    await expect(page.locator("#chain")).to_contain_text("verified 20")
    verified = gw.audit("audit.verified")[-1]
    assert (verified["actor"], verified["outcome"]) == ("console:admin", "intact") and verified["records"] > 0
    await screenshot(page, "audit")
    await context.close()


async def test_agents_can_be_disabled_enabled_and_rotated_with_the_secret_shown_once(gw, browser):
    await gw.gateway.operations("test").create_agent("dave-bot", "dave@example.com", "ops")
    context, page = await signed_in(browser, gw)
    await page.goto(f"{gw.url}/console/agents")
    row = page.locator("tr[data-agent=dave-bot]")
    await expect(row).to_contain_text("dave@example.com")
    await expect(row).to_contain_text("secret")
    grant = page.locator("tr[data-agent=alice-bot] + tr.grant pre.yaml")
    assert "- time.*" in (await grant.text_content() or "")
    await screenshot(page, "agents")

    await row.locator("button[name=rotate]").click()
    secret = (await page.locator("#new-secret pre").inner_text()).strip()
    async with httpx.AsyncClient(base_url=gw.url) as http:
        issued = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("dave-bot", secret))
    assert issued.status_code == 200, issued.text
    await page.goto(f"{gw.url}/console/agents")
    assert await page.locator("#new-secret").count() == 0  # shown once
    assert gw.audit("agent.secret_rotated")[-1]["actor"] == "console:admin"

    async with page.expect_navigation():
        await page.locator("tr[data-agent=dave-bot] button[name=disable]").click()
    await expect(page.locator("tr[data-agent=dave-bot] td.state")).to_have_text("disabled")
    async with httpx.AsyncClient(base_url=gw.url) as http:
        refused = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("dave-bot", secret))
    assert refused.status_code == 401
    async with page.expect_navigation():
        await page.locator("tr[data-agent=dave-bot] button[name=enable]").click()
    await expect(page.locator("tr[data-agent=dave-bot] td.state")).to_have_text("enabled")
    assert [
        r["actor"]
        for r in gw.audit()
        if r["event"] in ("agent.disabled", "agent.enabled") and r.get("agent") == "dave-bot"
    ] == ["console:admin", "console:admin"]
    await context.close()


async def test_forged_posts_are_refused_agent_strings_render_as_text_and_the_csp_blocks_inline_script(gw, browser):
    token = await gw.open_session("carol-bot", task=XSS_TASK)
    context, page = await signed_in(browser, gw)
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    response = await page.goto(f"{gw.url}/console/sessions?agent=carol-bot")
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"

    [sid] = [s.sid for s in await gw.gateway.store.list_sessions("carol-bot") if s.task == XSS_TASK]
    task = page.locator(f"tr[data-sid='{sid}'] td.task")
    await expect(task).to_have_text(XSS_TASK)
    assert await task.locator("img, script").count() == 0
    assert await page.evaluate("() => window.__xss") is None

    # A POST without the CSRF token (the cookie rides along, same origin) changes nothing.
    for body in ("{}", "{csrf: 'forged'}"):
        status = await page.evaluate(
            f"async (u) => (await fetch(u, {{method: 'POST', body: new URLSearchParams({body})}})).status",
            f"/console/sessions/{sid}/revoke",
        )
        assert status == 403
    assert (await gw.gateway.store.get_session(sid)).state == "active"
    # With the right token but from another origin: refused too.
    [cookie] = await context.cookies()
    csrf = await page.locator("header .signout input[name=csrf]").get_attribute("value")
    async with httpx.AsyncClient(base_url=gw.url, cookies={cookie["name"]: cookie["value"]}) as http:
        foreign = await http.post(
            f"/console/sessions/{sid}/revoke", data={"csrf": csrf}, headers={"origin": "http://attacker.example"}
        )
        assert foreign.status_code == 403
        same = await http.post(f"/console/sessions/{sid}/close", data={"csrf": csrf}, headers={"origin": gw.url})
        assert same.status_code == 303
    assert (await gw.gateway.store.get_session(sid)).state == "closed"

    # An injected inline script does not run: the CSP refuses it, and the browser reports the violation.
    await page.evaluate(
        "() => { window.__violations = [];"
        " document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.effectiveDirective)); }"
    )
    await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__injected = 1'; document.body.appendChild(s); }"
    )
    await page.wait_for_function("() => window.__violations.length > 0", timeout=WAIT_MS)
    assert await page.evaluate("() => window.__injected") is None
    assert await page.evaluate("() => window.__violations") == ["script-src-elem"]
    assert any("Content Security Policy" in text for text in violations), violations
    async with httpx.AsyncClient(base_url=gw.url) as http:  # the session the console closed refuses its token
        closed = await http.post("/mcp", json=INIT, headers={**HEADERS, "authorization": f"Bearer {token}"})
        assert closed.status_code == 401
    await context.close()
