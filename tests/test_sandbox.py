"""The sandbox around stdio tool servers: what a server can reach, what it never can, and when it is off."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config.files import gateway_files, load_gateway_config
from gateway.errors import ConfigError
from gateway.upstream.manifests import load_manifest
from tests.support.harness import SERVERS, http_manifest, running_gateway, time_manifest, write_config

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
ESCAPE = SERVERS / "escape.py"
AGENTS = {"bot": {"owner": "o@example.com", "grant": {"tools": ["*.*"], "resources": ["*"], "prompts": ["*"]}}}
QUICKSTART_REPOS = Path("/tmp/mcp-gateway-quickstart/repos")  # what tool_manifests/git.yaml lets the git server read


def escape_manifest(**extra: Any) -> dict[str, Any]:
    """tests/support/servers/escape.py, granted nothing beyond the defaults but its own script."""
    fields: dict[str, Any] = {
        "name": "escape",
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(ESCAPE)],
        "tools": "*",
        "sandbox": {"read": [str(ESCAPE)]},
    }
    return {**fields, **extra}


async def attempt(client: Any, paths: list[Path], mode: str) -> dict[str, str]:
    result = await client.call_tool("escape__attempt", {"paths": [str(p) for p in paths], "mode": mode})
    assert not result.is_error, result
    outcome: dict[str, str] = result.structured_content
    return outcome


async def test_a_sandboxed_server_cannot_reach_the_keys_store_audit_or_another_servers_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "time").mkdir(parents=True)
    (secrets / "time" / "TOKEN").write_text("the time server's secret")
    (secrets / "escape").mkdir()
    (secrets / "escape" / "KEY").write_text("its own secret")
    manifests = [escape_manifest(sandbox={"read": [str(ESCAPE), str(secrets / "escape")]}), time_manifest()]
    async with running_gateway(tmp_path, manifests=manifests, agents=AGENTS) as gw:
        config = gw.gateway.config
        state = config.state_dir
        keys = [state / "signing.pem", state / "credential.key", state / "state.key", state / "fingerprint.key"]
        files = [*keys, state / "gateway.db", config.audit.path, secrets / "time" / "TOKEN", tmp_path / "gateway.yaml"]
        assert all(p.is_file() for p in files)  # the gateway itself still uses every one of them
        async with gw.client(await gw.open_session("bot")) as client:
            read = await attempt(client, files, "read")
            appended = await attempt(client, [config.audit.path, state / "gateway.db", state / "signing.pem"], "append")
            listed = await attempt(client, [state, secrets, config.work_dir / "time", tmp_path], "list")
            planted = await attempt(
                client,
                [state / "planted", secrets / "time" / "planted", config.work_dir / "time" / "planted"],
                "create",
            )
            where = (await client.call_tool("escape__where", {})).structured_content
            assert where is not None
            own = await attempt(client, [Path(where["cwd"]) / "notes.txt", Path(where["tmp"]) / "scratch"], "create")
            own_secret = await attempt(client, [secrets / "escape" / "KEY"], "read")
            signal = (await client.call_tool("escape__signal", {"pid": os.getpid()})).structured_content
        assert gw.audit("upstream.unsandboxed") == []
    assert read == {str(p): "EACCES" for p in files}
    assert set(appended.values()) == {"EACCES"} and set(listed.values()) == {"EACCES"}
    assert set(planted.values()) == {"EACCES"} and not (state / "planted").exists()
    assert where["cwd"] == str(config.work_dir / "escape") and where["tmp"] == str(config.work_dir / "escape" / "tmp")
    assert state not in Path(where["cwd"]).parents
    assert set(own.values()) == {"ok"} and set(own_secret.values()) == {"ok"}
    assert signal == {"result": "EPERM"}  # nor can it signal (kill) the gateway, which runs in this test's process


@pytest.fixture
def quickstart_repo() -> Iterator[Path]:
    """A real git repository where the quickstart keeps them (the shipped git manifest grants that tree)."""
    QUICKSTART_REPOS.mkdir(parents=True, exist_ok=True)
    repo = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir=QUICKSTART_REPOS))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README.md").write_text("sandboxed\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "A commit the sandboxed git server reads"], check=True)
    try:
        yield repo
    finally:
        shutil.rmtree(repo)


async def test_the_shipped_servers_answer_tool_calls_inside_the_sandbox(tmp_path: Path, quickstart_repo: Path) -> None:
    extra = {"manifests": str(REPO / "tool_manifests")}  # the shipped files, as the quickstart uses them
    async with running_gateway(tmp_path, manifests=[], agents=AGENTS, extra=extra) as gw:
        specs = {name: u.spec for name, u in gw.gateway.upstreams.servers.items()}
        assert {"time", "git", "everything"} <= set(specs)
        assert all(spec.sandbox is not None for spec in specs.values())
        async with gw.client(await gw.open_session("bot")) as client:
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            log = await client.call_tool("git__git_log", {"repo_path": str(quickstart_repo)})
            status = await client.call_tool("git__git_status", {"repo_path": str(quickstart_repo)})
            echoed = await client.call_tool("everything__echo", {"message": "sandboxed"})
            summed = await client.call_tool("everything__get-sum", {"a": 2, "b": 3})
        assert gw.audit("upstream.unsandboxed") == []
    assert not now.is_error and "UTC" in now.content[0].text
    assert not log.is_error and "A commit the sandboxed git server reads" in log.content[0].text
    assert not status.is_error and "nothing to commit" in status.content[0].text
    assert echoed.content[0].text == "Echo: sandboxed"
    assert not summed.is_error and "5" in summed.content[0].text


def refusal(tmp_path: Path, sandbox: dict[str, Any], name: str = "escape") -> str:
    """The error loading a manifest with this sandbox gets (asserting it is refused)."""
    config = load_gateway_config(write_config(tmp_path, 8765, manifests=[escape_manifest(name=name, sandbox=sandbox)]))
    with pytest.raises(ConfigError) as refused:
        load_manifest(tmp_path / "manifests" / f"{name}.yaml", config)
    return str(refused.value)


@pytest.mark.parametrize(
    ("sandbox", "field", "exposed"),
    [
        ({"read": ["{root}/state"]}, "sandbox.read[0]", "state_dir"),
        ({"read": ["../state"]}, "sandbox.read[0]", "state_dir"),  # relative to the manifest file
        ({"read": ["{root}/state/signing.pem"]}, "sandbox.read[0]", "state_dir"),
        ({"read": ["/usr", "{root}"]}, "sandbox.read[1]", "state_dir"),  # above it: Landlock grants whole trees
        ({"write": ["{root}/state/audit.jsonl"]}, "sandbox.write[0]", "state_dir"),
        ({"write": ["{root}/secrets/time"]}, "sandbox.write[0]", "other servers' secrets"),
        ({"read": ["{root}/.work"]}, "sandbox.read[0]", "other servers' directories"),
        ({"read": ["{root}/link"]}, "sandbox.read[0]", "state_dir"),  # a symlink is judged by where it leads
    ],
)
def test_a_manifest_granting_the_gateways_files_is_refused_naming_the_field(
    tmp_path: Path, sandbox: dict[str, list[str]], field: str, exposed: str
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    listed = {kind: [p.format(root=tmp_path) for p in paths] for kind, paths in sandbox.items()}
    message = refusal(tmp_path, listed)
    assert message.startswith(f"{tmp_path / 'manifests' / 'escape.yaml'}: {field}: "), message
    assert exposed in message and "no tool server is ever granted the gateway's own files" in message
    assert "\n" not in message


def test_manifests_validate_refuses_a_manifest_granting_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, 8765, manifests=[escape_manifest(sandbox={"read": ["../state"]})])
    assert main(["manifests", "validate", "--offline", "--config", str(tmp_path / "gateway.yaml")]) == 1
    err = capsys.readouterr().err
    assert "escape.yaml: sandbox.read[0]: '../state' would expose state_dir" in err


def test_a_server_may_be_granted_its_own_secrets_and_unrelated_paths(tmp_path: Path) -> None:
    config = load_gateway_config(write_config(tmp_path, 8765, manifests=[]))
    data = tmp_path / "data"
    manifest = escape_manifest(sandbox={"read": [str(tmp_path / "secrets" / "escape")], "write": [str(data)]})
    path = tmp_path / "manifests" / "escape.yaml"
    path.write_text(yaml.safe_dump(manifest))
    policy = load_manifest(path, config).sandbox
    assert policy is not None
    assert tmp_path / "secrets" / "escape" in policy.read and data in policy.write
    assert config.work_dir / "escape" in policy.write


# Where a grant may lead: the gateway's files, places above and beside them, links into them, and harmless places.
CANDIDATES = [
    "state",
    "state/signing.pem",
    "state/logs",
    ".",
    "..",
    "secrets",
    "secrets/time",
    "secrets/escape",
    "secrets/escape/KEY",
    ".work",
    ".work/time",
    ".work/escape/cache",
    "data",
    "data/deep",
    "link-to-state",
    "link-to-data",
    "data/../state",
    "manifests",
    "state/../data",
]


@given(read=st.lists(st.sampled_from(CANDIDATES), max_size=4), write=st.lists(st.sampled_from(CANDIDATES), max_size=3))
@settings(max_examples=60, deadline=None)
def test_whatever_a_manifest_lists_no_granted_path_reaches_the_gateways_files(
    read: list[str], write: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for sub in ("state/logs", "secrets/time", "secrets/escape", ".work/time", "data/deep", "manifests"):
            (root / sub).mkdir(parents=True)
        for file in ("state/signing.pem", "state/audit.jsonl", "state/gateway.db", "secrets/time/TOKEN"):
            (root / file).write_text("x")
        (root / "link-to-state").symlink_to(root / "state")
        (root / "link-to-data").symlink_to(root / "data")
        config = load_gateway_config(write_config(root, 8765, manifests=[]))
        path = root / "manifests" / "escape.yaml"
        path.write_text(
            yaml.safe_dump(
                escape_manifest(
                    sandbox={"read": [str(root / p) for p in read], "write": [str(root / p) for p in write]}
                )
            )
        )
        try:
            policy = load_manifest(path, config).sandbox
        except ConfigError as exc:
            assert "no tool server is ever granted the gateway's own files" in str(exc)
            return
        assert policy is not None
        guarded = [p for p, _ in gateway_files(config) if _ != "secrets_dir"]
        guarded += [root / "secrets" / "time", root / ".work" / "time"]  # another server's secrets and directory
        for granted in (*policy.read, *policy.write):
            real = Path(os.path.realpath(granted))
            for item in guarded:
                target = Path(os.path.realpath(item))
                assert real != target and target not in real.parents and real not in target.parents, (granted, item)


async def test_without_landlock_a_stdio_server_starts_only_when_its_manifest_says_sandbox_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GATEWAY_SANDBOX", "unavailable")  # the kernel reported as offering no Landlock
    with pytest.raises(ConfigError) as refused:
        async with running_gateway(tmp_path / "on", manifests=[escape_manifest()], agents=AGENTS):
            pass
    assert str(refused.value) == (
        f"{tmp_path / 'on' / 'manifests' / 'escape.yaml'}: sandbox: this stdio server cannot be sandboxed here: "
        "GATEWAY_SANDBOX=unavailable is set; set `sandbox: off` in its manifest to run it unsandboxed"
    )
    root = tmp_path / "off"
    manifests = [escape_manifest(sandbox="off"), http_manifest("remote", "http://127.0.0.1:9/mcp")]  # http: unaffected
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        async with running_gateway(root, manifests=manifests, agents=AGENTS) as gw:
            async with gw.client(await gw.open_session("bot")) as client:
                reached = await attempt(client, [gw.gateway.config.signing_key], "read")
            records = gw.audit("upstream.unsandboxed")
    assert reached == {str(root / "state" / "signing.pem"): "ok"}  # unconfined, as the operator chose: the threat
    assert [(r["server"], r["reason"]) for r in records] == [("escape", "sandbox: off in its manifest")]
    assert any("escape runs unsandboxed" in r.getMessage() for r in caplog.records)


def test_manifests_validate_warns_about_an_unsandboxed_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, 8765, manifests=[escape_manifest(sandbox="off")])
    config = str(tmp_path / "gateway.yaml")
    assert main(["manifests", "validate", "--offline", "--config", config]) == 0
    assert "warning: escape: runs unsandboxed (its manifest says sandbox: off)" in capsys.readouterr().out
    assert main(["manifests", "validate", "--offline", "--strict", "--config", config]) == 1
