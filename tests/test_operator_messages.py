"""What a newcomer meets first: every refusal names the setting that changes it, and both eras agree."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio


async def test_a_loopback_gateway_answers_localhost_and_a_foreign_host_is_told_which_setting_admits_it(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        token = await gw.open_session("alice-bot")
        async with gw.client(token, url=f"http://localhost:{gw.port}/mcp") as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        async with gw.http() as http:
            refused = await http.post("/mcp", headers={"host": "gateway.example.com"}, json={})
            assert refused.status_code == 421
            assert "allowed_hosts in gateway.yaml" in refused.json()["error_description"]

            admin = await http.get("/metrics")
            assert admin.status_code == 401
            assert "set admin_token in gateway.yaml" in admin.json()["error_description"]


async def test_both_protocol_eras_declare_the_list_changes_the_gateway_sends(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        token = await gw.open_session("alice-bot")
        declared = {}
        for mode in ("legacy", "auto"):
            async with gw.client(token, mode=mode) as client:
                caps = client.server_capabilities
                assert caps is not None and caps.tools is not None
                declared[mode] = (
                    caps.tools.list_changed,
                    caps.prompts and caps.prompts.list_changed,
                    caps.resources and caps.resources.list_changed,
                )
        assert declared["legacy"] == declared["auto"] == (True, True, True)


async def test_a_wrong_admin_token_is_told_where_the_right_one_lives(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, manifests=[time_manifest()], extra={"admin_token": "x" * 32}) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            refused = await http.get("/admin/sessions", headers={"authorization": "Bearer wrong"})
        assert refused.status_code == 401
        assert refused.json()["error_description"] == (
            "admin token required: send gateway.yaml's admin_token as Authorization: Bearer"
        )


def test_a_new_secret_is_printed_alone_with_a_warning_that_it_is_shown_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.harness import write_config

    config = str(write_config(tmp_path, 8765, manifests=[time_manifest()]))
    assert main(["agents", "create", "new-bot", "--owner", "carol@example.com", "--config", config]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().split()) == 1  # the secret alone, for scripts
    assert err == "client secret for new-bot: shown once, store it now (only its hash is kept)\n"
    assert main(["agents", "rotate", "new-bot", "--config", config]) == 0
    rotated, err = capsys.readouterr()
    assert rotated.strip() != out.strip() and "shown once, store it now" in err
