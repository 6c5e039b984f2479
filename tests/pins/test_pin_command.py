"""`manifests pin`: a lockfile workflow that rewrites only the manifest's pins: block."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.pins.lockfile import replace_pins, write_pins
from tests.pins.support import mcp_gateway, mutable_manifest
from tests.support.harness import free_port, write_config

PIN = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32

MANIFEST = """\
# The time server: reviewed by platform, 2026-11.
name: time
owner: platform@example.com   # who answers for it
transport: stdio
command: python
args: ["-m", "mcp_server_time"]
tools: "*"
pins:
  old_tool: "{pin}"

  convert_time: "{pin}"
# Anything below the pins stays where it is.
timeout: 30s
"""


def test_only_the_pins_block_changes_and_comments_stay():
    text = MANIFEST.format(pin=PIN)
    rewritten = replace_pins(text, {"convert_time": OTHER, "get_current_time": PIN})
    assert rewritten == text.replace(
        f'  old_tool: "{PIN}"\n\n  convert_time: "{PIN}"\n',
        f'  convert_time: "{OTHER}"\n  get_current_time: "{PIN}"\n',
    )


def test_a_manifest_without_pins_gets_a_block_at_the_end():
    text = "name: time\ntools: '*'  # all of them"
    assert replace_pins(text, {"t": PIN}) == f"name: time\ntools: '*'  # all of them\npins:\n  t: \"{PIN}\"\n"


def test_a_flow_style_block_is_replaced_and_an_empty_one_written_as_braces():
    text = f'name: time\npins: {{t: "{PIN}",\n  u: "{PIN}"}}\nowner: x\n'
    assert replace_pins(text, {}) == "name: time\npins: {}\nowner: x\n"


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_.\-: #'\"]{1,16}", fullmatch=True), st.sampled_from([PIN, OTHER]), max_size=5
    )
)
def test_whatever_the_tool_names_the_file_reads_back_as_the_pins_written(pins):
    text = MANIFEST.format(pin=PIN)
    after = yaml.safe_load(replace_pins(text, pins))
    assert after == {**yaml.safe_load(text), "pins": pins}


@pytest.mark.parametrize(
    "text",
    [
        "name: time\npins: &reviewed {}\nother: *reviewed\n",  # another key depends on the block
        "name: time\npins: {}\npins: {}\n",  # the block is not the one YAML reads
    ],
)
def test_a_rewrite_that_would_change_anything_else_is_refused(tmp_path, text):
    manifest = tmp_path / "time.yaml"
    manifest.write_text(text)
    with pytest.raises(ConfigError, match="cannot rewrite its pins: block safely; write them by hand$"):
        write_pins(manifest, {"t": PIN})
    assert manifest.read_text() == text


@pytest.mark.anyio
async def test_without_a_terminal_and_without_yes_pin_shows_the_plan_and_refuses(tmp_path):
    write_config(tmp_path, free_port(), manifests=[mutable_manifest(tmp_path)])
    before = (tmp_path / "manifests" / "mutable.yaml").read_text()
    result = await mcp_gateway(tmp_path, "manifests", "pin", "mutable")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "mcp-gateway: error: not writing pins without confirmation: stdin is not a terminal (pass --yes)\n"
    )
    assert "mutable: 3 new, 0 changed, 0 removed" in result.stdout.decode()
    assert (tmp_path / "manifests" / "mutable.yaml").read_text() == before


@pytest.mark.anyio
async def test_pinning_one_tool_leaves_the_others_and_records_the_definition(tmp_path):
    write_config(tmp_path, free_port(), manifests=[mutable_manifest(tmp_path, pins={"crash": OTHER})])
    result = await mcp_gateway(tmp_path, "manifests", "pin", "mutable", "--tool", "greet", "--yes")
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((tmp_path / "manifests" / "mutable.yaml").read_text())
    assert set(manifest["pins"]) == {"crash", "greet"} and manifest["pins"]["crash"] == OTHER
    record = json.loads((tmp_path / "manifests" / "mutable.pins.json").read_text())
    assert record["greet"]["description"] == "Greet someone by name."
    cli_records = [json.loads(line) for line in (tmp_path / "state" / "audit-cli.jsonl").read_text().splitlines()]
    [audited] = [r for r in cli_records if r["event"] != "audit.checkpoint"]
    assert (audited["event"], audited["tool"]) == ("tool.pinned", "greet")
    assert audited["new_pin"] == manifest["pins"]["greet"] and "old_pin" not in audited

    again = await mcp_gateway(tmp_path, "manifests", "pin", "mutable", "--tool", "greet", "--yes")
    assert again.stdout.decode().startswith("mutable: pins are up to date")
    unknown = await mcp_gateway(tmp_path, "manifests", "pin", "mutable", "--tool", "nope", "--yes")
    assert unknown.returncode == 1
    assert unknown.stderr.decode() == "mcp-gateway: error: 'mutable' serves no tool 'nope' and has no pin for it\n"
