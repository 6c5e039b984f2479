"""`path_prefix` holds where a path really leads: a symbolic link inside the prefix cannot take a call outside."""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.files import GrantSpec
from gateway.identity.policy import compile_grant, decide, host_realpath
from tests.support.harness import running_gateway

pytestmark = pytest.mark.anyio


def git_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(path),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            f"commit in {path.name}",
        ],
        check=True,
    )
    return path


def git_manifest(repos: Path) -> dict[str, Any]:
    """mcp-server-git as the quickstart runs it: no --repository, so the grant is the fence the agent meets
    (the sandbox may read the repositories' directory, as the quickstart's manifest grants)."""
    return {
        "name": "git",
        "owner": "platform@example.com",
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "mcp_server_git"],
        "tools": "*",
        "sandbox": {"read": [str(repos)]},
    }


async def test_a_symlink_inside_the_prefix_cannot_lead_git_log_to_a_repository_outside(tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    repos.mkdir()
    inside = git_repo(repos / "inside")
    outside = git_repo(tmp_path / "secret")  # the repository an agent must not read
    (repos / "link").symlink_to(outside)  # the repository itself, through a link
    (repos / "parent").symlink_to(tmp_path)  # a link to a directory above: .../parent/secret
    (repos / "deep").symlink_to(outside / ".git")  # `..` after a link: .../deep/.. is the outside repository
    agents = {
        "research-bot": {
            "owner": "alice@example.com",
            "grant": {
                "tools": ["git.git_log"],
                "arguments": {"git.git_log": {"repo_path": {"path_prefix": str(repos)}}},
            },
        }
    }
    async with running_gateway(tmp_path / "gw", manifests=[git_manifest(repos)], agents=agents) as gw:
        token = await gw.open_session("research-bot")
        async with gw.client(token) as client:
            allowed = await client.call_tool("git__git_log", {"repo_path": str(inside), "max_count": 1})
            assert not allowed.is_error and "commit in inside" in allowed.content[0].text

            for escape in (repos / "link", repos / "parent" / "secret", f"{repos}/deep/.."):
                refused = await client.call_tool("git__git_log", {"repo_path": str(escape), "max_count": 1})
                text = refused.content[0].text
                assert refused.is_error, escape
                assert "argument 'repo_path'" in text and f"must be a path under {repos}" in text, text
                assert "symbolic link" in text and str(outside) not in text, text  # the host's layout stays hidden
        denied = [r for r in gw.audit("tool.call") if r["decision"] == "deny"]
        assert [r["reason"] for r in denied] == ["argument_constraint"] * 3
        assert len([r for r in gw.audit("tool.call") if r["decision"] == "allow"]) == 1


# ------------------------------------------------------------------ the property, over generated paths

PARTS = ["a", "b", "new", ".", "..", "", "link-out", "link-up", "link-in", "link-ab", "link-self", "loop", "split"]
PLAIN = {"a", "b", "new", ".", ""}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """prefix/{a/b, link-out -> outside, link-up -> .., link-in -> a, link-self -> ., loop -> loop}, and the
    same prefix also reached through a link of its own. `split` tells the two readings of `..` apart:
    prefix/link-ab/../split is prefix/a/split (a directory) to the kernel, prefix/split (a link out) as text."""
    root = tmp_path_factory.mktemp("paths")
    prefix, outside = root / "prefix", root / "outside"
    (prefix / "a" / "b").mkdir(parents=True)
    (outside / "a" / "b").mkdir(parents=True)
    (prefix / "link-out").symlink_to(outside)
    (prefix / "link-up").symlink_to("..")
    (prefix / "link-in").symlink_to("a")
    (prefix / "a" / "link-out").symlink_to(outside / "a")
    (prefix / "link-self").symlink_to(".")
    (prefix / "loop").symlink_to("loop")
    (prefix / "link-ab").symlink_to("a/b")
    (prefix / "a" / "split").mkdir()
    (prefix / "split").symlink_to(outside)
    (root / "via").symlink_to(prefix)
    return prefix, root / "via"


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(PARTS), max_size=8), through_link=st.booleans(), slashes=st.sampled_from(["/", "//"])
)
@example(parts=["link-ab", "..", "split"], through_link=False, slashes="/")  # the readings of `..` disagree
@example(parts=["link-out", "..", "prefix", "a"], through_link=True, slashes="/")  # out through a link and back in
def test_an_allowed_path_always_really_leads_inside_the_prefix(
    tree: tuple[Path, Path], parts: list[str], through_link: bool, slashes: str
) -> None:
    prefix = str(tree[1] if through_link else tree[0])  # a prefix that is itself a link is resolved too
    grant = compile_grant(
        GrantSpec(tools=["git.git_log"], arguments={"git.git_log": {"repo_path": {"path_prefix": prefix}}})
    )
    path = prefix + slashes + slashes.join(parts)
    decision = decide(grant, "git", "git_log", {"repo_path": path}, resolve=host_realpath)
    real_prefix = os.path.realpath(prefix)
    if decision.allowed:
        for reading in (os.path.realpath(path), os.path.realpath(posixpath.normpath(path))):
            assert reading == real_prefix or reading.startswith(real_prefix + "/"), (path, reading)
    if set(parts) <= PLAIN:  # no link and no `..`: nothing can lead outside, so nothing is refused
        assert decision.allowed, (path, decision)
