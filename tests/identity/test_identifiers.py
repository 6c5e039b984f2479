"""Identifiers are checked against the whole text: a trailing newline never passes (`$` would let it)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.commands.agents import _agent_id, _email
from gateway.config.files import AgentSpec, load_agents
from gateway.errors import ConfigError
from gateway.upstream.manifests import Manifest
from tests.identity.test_admin_api import ADMIN, ADMIN_TOKEN
from tests.support.harness import REPO, running_gateway

pytestmark = pytest.mark.anyio


async def test_an_agent_id_with_a_trailing_newline_is_refused_by_the_cli_the_admin_api_and_agents_yaml(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path, manifests=[], extra={"admin_token": ADMIN_TOKEN}) as gw:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "agents",
                "create",
                "rb\n",
                "--owner",
                "r@example.com",
                "--config",
                str(tmp_path / "gateway.yaml"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert done.returncode == 2, done.stdout
        assert "'rb\\n' must match" in done.stderr and done.stdout == ""

        async with gw.http() as http:
            refused = await http.post("/admin/agents", json={"id": "rb\n", "owner": "r@example.com"}, headers=ADMIN)
            assert refused.status_code == 400 and "agent id must match" in refused.json()["error"]
            refused = await http.post("/admin/agents", json={"id": "rb", "owner": "r@example.com\n"}, headers=ADMIN)
            assert refused.status_code == 400 and "email" in refused.json()["error"]
        assert await gw.gateway.store.get_agent("rb\n") is None
        assert await gw.gateway.store.get_agent("rb") is None

    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": {"rb\n": {"owner": "r@example.com"}}}))
    with pytest.raises(ConfigError, match=r"agent id 'rb\\n' must match"):
        load_agents(path)


def _refuses(check: Any, value: str) -> bool:
    try:
        check(value)
    except (ValueError, ValidationError, argparse.ArgumentTypeError, ConfigError):
        return True
    return False


def _agents_yaml(agent_id: str) -> None:
    from gateway.config.files import AgentsFile

    AgentsFile.model_validate({"agents": {agent_id: {"owner": "o@example.com"}}})


def _manifest_name(name: str) -> None:
    Manifest.model_validate(
        {"name": name, "owner": "o@example.com", "transport": "stdio", "command": "true", "tools": "*"}
    )


def _pin(pin: str) -> None:
    Manifest.model_validate(
        {
            "name": "x",
            "owner": "o@example.com",
            "transport": "stdio",
            "command": "true",
            "tools": "*",
            "pins": {"t": pin},
        }
    )


def _owner(email: str) -> None:
    AgentSpec.model_validate({"owner": email})


agent_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
server_names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True)
pins = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)
emails = st.from_regex(r"[a-z0-9.+_-]{1,20}@[a-z0-9.-]{1,20}", fullmatch=True)
VALIDATORS = [
    ("CLI agent id", _agent_id, agent_ids),
    ("agents.yaml agent id", _agents_yaml, agent_ids),
    ("manifest server name", _manifest_name, server_names),
    ("manifest pin", _pin, pins),
    ("CLI owner email", _email, emails),
    ("agents.yaml owner email", _owner, emails),
]


@settings(max_examples=100, deadline=None)
@given(data=st.data(), suffix=st.sampled_from(["\n", "\r\n", "\n\n"]))
@pytest.mark.parametrize(("what", "check", "valid"), VALIDATORS, ids=[v[0] for v in VALIDATORS])
def test_every_identifier_validator_refuses_a_valid_identifier_with_a_trailing_newline(
    what: str, check: Any, valid: st.SearchStrategy[str], data: st.DataObject, suffix: str
) -> None:
    value = data.draw(valid)
    assert not _refuses(check, value), f"{what} refused the valid {value!r}"
    assert _refuses(check, value + suffix), f"{what} accepted {value + suffix!r}"


@pytest.mark.parametrize("owner", ["a\x1b[31m@example.com", "a@exa\x9bmple.com", "a@b\x00"])
def test_an_owner_email_with_control_characters_is_refused(owner: str) -> None:
    assert _refuses(_owner, owner) and _refuses(_email, owner)
