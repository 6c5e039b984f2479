"""Agent lifecycle: agents expire, idle agents are disabled, old credentials are refused with what to do.

Every test moves the gateway's injected clock and waits for the sweep's audit record; nothing sleeps.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml

from gateway.identity.lifecycle import STALE_SHARE, Lifecycle
from gateway.store.base import AgentRecord
from gateway.store.sqlite import SQLiteStore
from tests.budgets.test_accounting import each_store
from tests.identity.support import basic, call_time, cli, client_credentials, give_secret, mcp_status, token
from tests.support.harness import Harness, running_gateway, time_manifest
from tests.support.serving import sqlite_at_version

if TYPE_CHECKING:
    from gateway.app import Gateway


def fresh_lifecycle(g: Gateway) -> Lifecycle:
    """A sweep of its own (its CHECK_EVERY clock starts now), over the running gateway's collaborators."""
    return Lifecycle(g.live, g.store, g.agents, g.sessions, g.audit, g.clock)


pytestmark = pytest.mark.anyio

DAY = 86400.0
GRANT = {"tools": ["time.*"], "budget": {"session_ttl": "1d", "idle_timeout": "1d"}}


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


async def record(gw: Harness, event: str, **match: Any) -> dict[str, Any]:
    """The first audit record of `event` whose fields include `match`, once the gateway has written it."""
    with anyio.fail_after(20):
        while True:
            found = [r for r in gw.audit(event) if all(r.get(k) == v for k, v in match.items())]
            if found:
                return found[0]
            await anyio.sleep(0.05)


async def test_an_agent_is_disabled_and_its_sessions_revoked_when_it_expires(tmp_path):
    now = time.time()
    agents = {
        "temp-bot": {"owner": "t@example.com", "grant": GRANT, "expires": iso(now + 600)},
        "kept-bot": {"owner": "k@example.com", "grant": GRANT},
    }
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents) as gw:
        secret = await give_secret(gw, "temp-bot")
        kept_secret = await give_secret(gw, "kept-bot")
        live = (await client_credentials(gw, "temp-bot", secret))["access_token"]
        kept = (await client_credentials(gw, "kept-bot", kept_secret))["access_token"]
        assert not (await call_time(gw, live)).is_error

        gw.clock.advance(700)  # past `expires`, well within the sessions' own lifetime
        expired = await record(gw, "agent.expired", agent="temp-bot")
        assert expired["owner"] == "t@example.com" and expired["actor"] == "lifecycle"
        assert len(expired["sessions_revoked"]) == 1

        stored = await gw.gateway.store.get_agent("temp-bot")
        assert stored is not None and stored.disabled
        session = await gw.gateway.store.get_session(expired["sessions_revoked"][0])
        assert session is not None and session.state == "revoked" and session.reason == "agent expired"
        assert (await mcp_status(gw, live)).status_code == 401
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("temp-bot", secret))
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        # Only the expired agent stopped.
        assert not (await call_time(gw, kept)).is_error
        assert not gw.audit("agent.idle_disabled")


async def test_the_token_endpoint_refuses_an_expired_agent_before_any_sweep_has_disabled_it(tmp_path):
    agents = {"temp-bot": {"owner": "t@example.com", "grant": GRANT, "expires": "2020-01-01"}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents) as gw:
        secret = await give_secret(gw, "temp-bot")
        gw.gateway.agents.forget("temp-bot")
        await gw.gateway.store.update_agent("temp-bot", disabled=False)  # as if the sweep had not run
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("temp-bot", secret))
        assert refused.status_code == 401
        assert refused.json()["error_description"] == "client authentication failed"


async def test_an_agent_unused_for_disable_after_idle_is_disabled_and_a_call_counts_as_use(tmp_path):
    agents = {
        "idle-bot": {"owner": "i@example.com", "grant": GRANT, "disable_after_idle": "1h"},
        "busy-bot": {"owner": "b@example.com", "grant": GRANT, "disable_after_idle": None},
    }
    extra = {"agent_defaults": {"disable_after_idle": "1h"}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra=extra) as gw:
        lifecycle = fresh_lifecycle(gw.gateway)
        secret = await give_secret(gw, "idle-bot")
        access = (await client_credentials(gw, "idle-bot", secret))["access_token"]
        stored = await gw.gateway.store.get_agent("idle-bot")
        assert stored is not None and stored.last_used is not None  # the token counts as use

        gw.clock.advance(40 * 60)
        assert not (await call_time(gw, access)).is_error  # a call 40 minutes in: used again
        gw.clock.advance(40 * 60)  # 80 minutes after the token, 40 after the call
        await lifecycle.enforce(gw.clock())
        assert not gw.audit("agent.idle_disabled")

        gw.clock.advance(25 * 60)  # 65 minutes after the call
        disabled = await record(gw, "agent.idle_disabled", agent="idle-bot")
        assert disabled["owner"] == "i@example.com" and len(disabled["sessions_revoked"]) == 1
        assert (await mcp_status(gw, access)).status_code == 401
        # busy-bot says `disable_after_idle: null`: never, whatever the gateway's default.
        assert [r["agent"] for r in gw.audit("agent.idle_disabled")] == ["idle-bot"]
        busy = await gw.gateway.store.get_agent("busy-bot")
        assert busy is not None and not busy.disabled

        # Enabling it again is use: it is not disabled again at the next sweep.
        await gw.gateway.operations("test").enable_agent("idle-bot")
        await lifecycle.enforce(gw.clock())
        again = await gw.gateway.store.get_agent("idle-bot")
        assert again is not None and not again.disabled
        await client_credentials(gw, "idle-bot", secret)


async def test_a_secret_past_credential_max_age_is_refused_with_how_to_rotate_after_an_alert_and_rotation_resets_it(
    tmp_path,
):
    agents = {"old-bot": {"owner": "o@example.com", "grant": GRANT}}
    extra = {"agent_defaults": {"credential_max_age": "30d"}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra=extra) as gw:
        secret = await give_secret(gw, "old-bot")
        await client_credentials(gw, "old-bot", secret)

        gw.clock.advance(25 * DAY)  # past 80% of 30 days
        stale = await record(gw, "agent.credential_stale", agent="old-bot")
        assert stale["credential"] == "secret" and stale["credential_max_age_days"] == "30"
        assert "mcp-gateway agents rotate old-bot" in stale["action"]
        await client_credentials(gw, "old-bot", secret)  # an alert, not yet a refusal
        await gw.gateway.lifecycle.enforce(gw.clock())
        assert len(gw.audit("agent.credential_stale")) == 1  # alerted once

        gw.clock.advance(6 * DAY)  # 31 days old
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("old-bot", secret))
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert refused.json()["error_description"] == (
            "client secret is older than credential_max_age (30 days): rotate it with mcp-gateway agents rotate old-bot"
        )
        failed = await record(gw, "auth.failed")
        assert "rotate it with mcp-gateway agents rotate old-bot" in " ".join(failed["reasons"])
        # Someone without the secret learns nothing: a wrong secret gets the uniform answer.
        wrong = await token(gw, {"grant_type": "client_credentials"}, basic("old-bot", "mgw_wrong"))
        assert wrong.status_code == 401 and wrong.json()["error_description"] == "client authentication failed"

        fresh = await give_secret(gw, "old-bot")
        await client_credentials(gw, "old-bot", fresh)  # rotated: its age starts again
        gw.clock.advance(STALE_SHARE * 30 * DAY - DAY)
        await gw.gateway.lifecycle.enforce(gw.clock())
        assert len(gw.audit("agent.credential_stale")) == 1
        await client_credentials(gw, "old-bot", fresh)


async def test_an_agent_created_with_expires_by_the_cli_expires_and_a_bad_value_is_refused_in_one_line(
    tmp_path, capsys
):
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents={}) as gw:
        await cli(gw, "agents", "create", "tmp-bot", "--owner", "t@example.com", "--expires", "tomorrow", status=1)
        assert "expires: 'tomorrow' is not an ISO 8601 date or time" in capsys.readouterr().err
        await cli(
            gw,
            "agents",
            "create",
            "tmp-bot",
            "--owner",
            "t@example.com",
            "--expires",
            iso(time.time() + 600),
            "--credential-max-age",
            "90d",
        )
        shown = json.loads(await cli(gw, "agents", "show", "tmp-bot", "--json"))
        assert shown["lifecycle"]["credential_max_age"] == 90 * DAY and shown["lifecycle"]["credential"] == "secret"
        assert shown["lifecycle"]["expires"] is not None

        gw.clock.advance(700)
        expired = await record(gw, "agent.expired", agent="tmp-bot")
        assert expired["expires"] == shown["lifecycle"]["expires"]
        stored = await gw.gateway.store.get_agent("tmp-bot")
        assert stored is not None and stored.disabled


async def test_a_store_made_before_lifecycle_counts_existing_credentials_from_their_agents_creation(tmp_path):
    path = tmp_path / "gateway.db"
    db = sqlite_at_version(path, 4)  # the schema as the release before agent lifecycle left it
    db.execute(
        "INSERT INTO agents (id, owner, source, created_at, secret_hash) "
        "VALUES ('old-bot', 'o@example.com', 'store', 1000, 'h')"
    )
    db.execute(
        "INSERT INTO agents (id, owner, source, created_at, jwks) "
        "VALUES ('keyed-bot', 'k@example.com', 'store', 2000, '{\"keys\": []}')"
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get_agent("old-bot")
        assert old is not None and old.secret_at == 1000 and old.keys_at is None and old.last_used is None
        keyed = await store.get_agent("keyed-bot")
        assert keyed is not None and keyed.keys_at == 2000 and keyed.secret_at is None
        assert await store.update_agent("old-bot", secret_at=5000.0, last_used=6000.0)
        rotated = await store.get_agent("old-bot")
        assert rotated is not None and rotated.secret_at == 5000 and rotated.last_used == 6000
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_an_agents_key_set_age_restarts_only_when_agents_yaml_changes_its_keys(kind, tmp_path):
    def defined(jwks: dict[str, Any]) -> dict[str, AgentRecord]:
        return {"keyed-bot": AgentRecord(id="keyed-bot", owner="k@example.com", source="config", jwks=jwks)}

    first, second = {"keys": [{"kid": "a"}]}, {"keys": [{"kid": "b"}]}
    async with each_store(kind, tmp_path) as store:
        await store.sync_config_agents(defined(first), 1000.0)
        await store.sync_config_agents(defined(first), 2000.0)  # a restart or reload with the same keys
        kept = await store.get_agent("keyed-bot")
        assert kept is not None and kept.keys_at == 1000
        await store.sync_config_agents(defined(second), 3000.0)  # a new key registered
        changed = await store.get_agent("keyed-bot")
        assert changed is not None and changed.keys_at == 3000 and changed.created_at == 1000
        assert await store.last_seen_by_agent() == {}


async def test_a_credential_max_age_added_to_gateway_yaml_applies_at_reload_without_a_restart(tmp_path):
    agents = {"old-bot": {"owner": "o@example.com", "grant": GRANT}}
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents) as gw:
        secret = await give_secret(gw, "old-bot")
        gw.clock.advance(40 * DAY)
        await client_credentials(gw, "old-bot", secret)  # no max age configured: any age will do

        path = gw.root / "gateway.yaml"
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "agent_defaults": {"credential_max_age": "30d"}}))
        assert gw.gateway.reloader is not None and await gw.gateway.reloader.reload("test")
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("old-bot", secret))
        assert refused.status_code == 401 and "credential_max_age (30 days)" in refused.json()["error_description"]
