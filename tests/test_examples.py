"""The shipped examples stay valid: the quickstart config loads, IDE snippets parse and point at the gateway."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from gateway.config.files import load_agents, load_gateway_config
from gateway.identity.policy import compile_grant
from gateway.upstream.manifests import load_manifests

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
        assert "http://127.0.0.1:8765/mcp" in text, path.name
        # a pasted token, or (the *.signin.* snippets) nothing: the IDE signs in
        assert ("Bearer" in text) != (".signin." in path.name), path.name


def test_the_quickstart_admits_sign_ins_through_its_ide_template() -> None:
    from gateway.config.files import check_login, load_templates

    config = load_gateway_config(REPO / "examples" / "quickstart" / "gateway.yaml")
    check_login(config)
    templates = load_templates(config.agents)
    assert "dcr-*" in templates["ide"].clients and config.clients.dynamic_registration


def test_the_readme_quickstart_command_installs_every_python_server_the_shipped_manifests_run() -> None:
    command = next(line for line in (REPO / "README.md").read_text().splitlines() if "quickstart/run.sh" in line)
    extras = re.search(r"pip install -e '\.\[([\w,]+)\]'", command)
    assert extras is not None, command
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = {
        re.split(r"[<>=\[ ]", req)[0].replace("-", "_") for extra in extras[1].split(",") for req in optional[extra]
    }
    specs = load_manifests(load_gateway_config(REPO / "examples" / "quickstart" / "gateway.yaml"))
    modules = {s.args[1] for s in specs.values() if Path(s.command).name.startswith("python") and s.args[:1] == ("-m",)}
    assert modules and modules <= installed
