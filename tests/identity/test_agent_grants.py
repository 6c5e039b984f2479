"""Grants for CLI- and API-created agents: one schema with agents.yaml, audited, live at the next call."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from gateway.config.files import GrantSpec, parse_grant
from gateway.errors import ConfigError
from tests.identity.support import cli, client_credentials
from tests.support.harness import Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Wait until `check()` holds: the gateway re-reads a store agent at most a second after a CLI change."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


async def _tool_names(gw: Harness, access_token: str) -> list[str]:
    async with gw.client(access_token) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


async def _unknown(gw: Harness, access_token: str, tool: str) -> str:
    async with gw.client(access_token) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool(tool, {"timezone": "UTC"})
    return caught.value.error.message


async def test_a_cli_agent_granted_one_tool_can_call_exactly_that_tool(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = (await cli(gw, "agents", "create", "grant-bot", "--owner", "g@example.com")).strip()
        body = await client_credentials(gw, "grant-bot", secret)
        assert await _tool_names(gw, body["access_token"]) == []  # a new agent is granted nothing

        out = await cli(
            gw,
            "agents",
            "grant",
            "grant-bot",
            "--tools",
            "time.get_current_time",
            "--budget",
            "session_calls=50",
            "--budget",
            "session_ttl=2h",
        )
        assert "granted grant-bot" in out

        async def listed() -> bool:
            return await _tool_names(gw, body["access_token"]) == ["time__get_current_time"]

        await _eventually(listed)  # the live session sees it at its next call, no new token needed
        async with gw.client(body["access_token"]) as client:
            result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error
        assert await _unknown(gw, body["access_token"], "time__convert_time") == "Unknown tool: time__convert_time"

        shown = yaml.safe_load(await cli(gw, "agents", "show", "grant-bot"))
        assert shown["source"] == "store" and shown["credential"] == "secret"
        assert shown["grant"]["tools"] == ["time.get_current_time"]
        assert shown["grant"]["budget"]["session_calls"] == 50 and shown["grant"]["budget"]["session_ttl"] == 7200
        as_json = json.loads(await cli(gw, "agents", "show", "grant-bot", "--json"))
        assert as_json == shown

        grant_file = tmp_path / "grant.yaml"
        grant_file.write_text(yaml.safe_dump({"tools": ["time.*"], "budget": {"tool_calls": {"time.convert_time": 3}}}))
        await cli(gw, "agents", "grant", "grant-bot", "--file", str(grant_file))

        async def widened() -> bool:
            return await _tool_names(gw, body["access_token"]) == ["time__convert_time", "time__get_current_time"]

        await _eventually(widened)

        records = [json.loads(line) for line in (gw.root / "state" / "audit-cli.jsonl").read_text().splitlines()]
        changes = [r for r in records if r["event"] == "agent.grant_changed"]
        assert [c["tools"] for c in changes] == [["time.get_current_time"], ["time.*"]]
        assert all(c["actor"].startswith("cli") and c["agent"] == "grant-bot" for c in changes)
        assert changes[1]["previous_grant"] == changes[0]["grant"] != changes[1]["grant"]


async def test_an_admin_api_grant_reaches_a_live_session_at_its_next_call(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], extra={"admin_token": ADMIN_TOKEN}) as gw:
        async with gw.http() as http:
            created = await http.post("/admin/agents", json={"id": "api-bot", "owner": "a@example.com"}, headers=ADMIN)
            body = await client_credentials(gw, "api-bot", created.json()["client_secret"])
            assert await _tool_names(gw, body["access_token"]) == []

            granted = await http.put(
                "/admin/agents/api-bot/grant", json={"tools": ["time.convert_time"]}, headers=ADMIN
            )
            assert granted.status_code == 200, granted.text
            assert granted.json()["grant"]["tools"] == ["time.convert_time"]
            # The admin API runs in the gateway's process: no wait at all.
            assert await _tool_names(gw, body["access_token"]) == ["time__convert_time"]
            assert await _unknown(gw, body["access_token"], "time__get_current_time") == (
                "Unknown tool: time__get_current_time"
            )

            shown = (await http.get("/admin/agents/api-bot", headers=ADMIN)).json()
            assert shown["grant"]["tools"] == ["time.convert_time"] and shown["source"] == "store"
            assert (await http.put("/admin/agents/ghost-bot/grant", json={}, headers=ADMIN)).status_code == 404
            unauthenticated = await http.put("/admin/agents/api-bot/grant", json={"tools": ["time.*"]})
            assert unauthenticated.status_code == 401
            huge = await http.put(
                "/admin/agents/api-bot/grant", headers=ADMIN, json={"tools": [f"time.t{i}" for i in range(20_000)]}
            )
            assert huge.status_code == 413

        changes = gw.audit("agent.grant_changed")
        assert [(c["actor"], c["agent"], c["tools"]) for c in changes] == [("admin", "api-bot", ["time.convert_time"])]


@pytest.mark.parametrize(
    ("grant", "field"),
    [
        ({"tools": ["time.*"], "tool": ["x.y"]}, "tool: unknown field"),
        ({"tools": ["time"]}, "tools: 'time' must be server.tool"),
        ({"budget": {"session_calls": 0}}, "budget.session_calls: Input should be greater than 0"),
        ({"budget": {"session_ttl": "forever"}}, "budget.session_ttl"),
        ({"budget": {"tool_calls": {"time.*": 3}}}, "budget.tool_calls: 'time.*' must name one tool"),
    ],
)
async def test_an_invalid_grant_is_refused_by_cli_and_api_with_one_line_naming_the_field(tmp_path, grant, field):
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        await cli(gw, "agents", "create", "bad-bot", "--owner", "b@example.com")
        path = tmp_path / "grant.yaml"
        path.write_text(yaml.safe_dump(grant))
        await cli(gw, "agents", "grant", "bad-bot", "--file", str(path), status=1)
        async with gw.http() as http:
            refused = await http.put("/admin/agents/bad-bot/grant", json=grant, headers=ADMIN)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert field in error and "\n" not in error
        record = await gw.gateway.store.get_agent("bad-bot")
        assert record is not None and record.grant is None  # nothing was stored


async def test_the_cli_names_the_file_and_field_of_an_invalid_grant(tmp_path, capsys):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        await cli(gw, "agents", "create", "bad-bot", "--owner", "b@example.com")
        capsys.readouterr()
        await cli(gw, "agents", "grant", "bad-bot", "--budget", "session_calls=lots", status=1)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "budget.session_calls" in err[0] and "integer" in err[0]
        path = tmp_path / "g.yaml"
        path.write_text("tools: [time.*]\nbugdet: {}\n")
        await cli(gw, "agents", "grant", "bad-bot", "--file", str(path), status=1)
        err = capsys.readouterr().err.strip()
        assert err == f"mcp-gateway: error: {path}: bugdet: unknown field"


async def test_an_agents_yaml_agent_cannot_be_granted_by_the_cli_or_the_api(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()], extra={"admin_token": ADMIN_TOKEN}) as gw:
        await cli(gw, "agents", "grant", "bob-bot", "--tools", "time.*", status=1)
        async with gw.http() as http:
            refused = await http.put("/admin/agents/bob-bot/grant", json={"tools": ["time.*"]}, headers=ADMIN)
        assert refused.status_code == 409 and "agents.yaml" in refused.json()["error"]
        shown = yaml.safe_load(await cli(gw, "agents", "show", "bob-bot"))
        assert shown["source"] == "config" and shown["grant"]["tools"] == ["time.get_current_time"]
        assert gw.audit("agent.grant_changed") == []


_FIELDS = st.sampled_from(["tools", "resources", "prompts", "budget", "alerts", "arguments", "tool", "grant"])
_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.lists(st.sampled_from(["time.*", "time", "git.git_log", ".x", "a.", "t.[", "*"]), max_size=3),
    st.dictionaries(
        st.sampled_from(["session_calls", "session_ttl", "loop_repeats", "nope"]),
        st.one_of(st.integers(-2, 5), st.sampled_from(["8h", "x", None])),
        max_size=2,
    ),
    st.lists(st.floats(-1, 2, allow_nan=False), max_size=3),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_FIELDS, _VALUES, max_size=3))
def test_a_grant_the_api_accepts_is_exactly_one_agents_yaml_accepts(raw):
    """One validator: the admin/CLI path and agents.yaml agree on every input, and errors are one line."""
    from gateway.config.files import AgentsFile

    try:
        via_api: GrantSpec | None = parse_grant(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("grant: ")
        via_api = None
    try:
        via_file: GrantSpec | None = (
            AgentsFile.model_validate({"agents": {"a": {"owner": "a@example.com", "grant": raw}}}).agents["a"].grant
        )
    except ValidationError:
        via_file = None
    assert via_api == via_file


async def test_a_rotated_signing_key_outlives_the_longest_session_a_store_grant_allows(tmp_path):
    async with running_gateway(tmp_path, manifests=[]) as gw:
        await cli(gw, "agents", "create", "long-bot", "--owner", "l@example.com")
        await cli(gw, "agents", "grant", "long-bot", "--tools", "time.*", "--budget", "session_ttl=3d")
        assert "verifies its tokens for 259200s more" in await cli(gw, "keys", "rotate")
        (rotated,) = [
            json.loads(line)
            for line in (gw.root / "state" / "audit-cli.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "key.rotated"
        ]
        assert rotated["overlap_s"] == 259200
