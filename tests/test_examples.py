"""The shipped examples stay valid: the quickstart config loads, IDE snippets parse and point at the gateway."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import load_agents, load_gateway_config
from gateway.manifests import load_manifests
from gateway.policy import compile_grant

REPO = Path(__file__).resolve().parents[1]


def test_the_quickstart_configuration_and_the_shipped_manifests_load() -> None:
    config = load_gateway_config(REPO / "examples" / "quickstart" / "gateway.yaml")
    specs = load_manifests(config)
    assert {"time", "git", "everything"} <= set(specs)
    agents = load_agents(config.agents)
    assert {"research-bot", "ops-bot"} <= set(agents)
    research = compile_grant(agents["research-bot"].grant)
    ops = compile_grant(agents["ops-bot"].grant)
    assert research.allows_tool("git", "git_log") and not ops.allows_tool("git", "git_log")


def test_ide_snippets_are_json_pointing_at_the_mcp_endpoint_with_a_bearer_header() -> None:
    snippets = sorted((REPO / "examples" / "ide").glob("*.json"))
    assert len(snippets) >= 3
    for path in snippets:
        text = path.read_text()
        json.loads(text)
        assert "http://127.0.0.1:8765/mcp" in text and "Bearer" in text, path.name
