"""Grants: the list filter and the call gate are one decision; argument constraints hold; default deny."""

from __future__ import annotations

import string

import anyio
import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.files import GrantSpec
from gateway.identity.policy import EMPTY_GRANT, compile_grant, decide, host_realpath
from gateway.mcp.views import Names, View
from gateway.upstream.hub import Catalog, Upstreams
from gateway.upstream.manifests import UpstreamSpec

SERVERS = ["time", "git", "files-2"]
tool_names = st.text(alphabet=string.ascii_lowercase + "._-", min_size=1, max_size=12).filter(lambda s: s[0].isalpha())
patterns = st.builds(
    lambda server, tool: f"{server}.{tool}",
    st.sampled_from([*SERVERS, "*", "g*", "nope"]),
    st.one_of(tool_names, st.sampled_from(["*", "get_*", "*.*", "a?"])),
)


def views(catalog: dict[str, list[str]]) -> list[View]:
    return anyio.run(_views, catalog)  # the hub's locks and events belong to an event loop


async def _views(catalog: dict[str, list[str]]) -> list[View]:
    specs = {
        name: UpstreamSpec(
            name=name,
            owner="o@example.com",
            transport="stdio",
            isolation="shared",
            tools=None,
            pins={},
            timeout=1.0,
            command="true",
        )
        for name in catalog
    }
    upstreams = Upstreams(specs)
    for name, tools in catalog.items():
        listed = {t: types.Tool(name=t, input_schema={"type": "object"}) for t in tools}
        upstreams[name].catalog = Catalog(tools=listed, all_tools=listed)
    names = Names(upstreams)
    names.rebuild()
    return [View(upstreams, names, None), *(View(upstreams, names, s) for s in catalog)]


@settings(max_examples=300, deadline=None)
@given(
    catalog=st.fixed_dictionaries({s: st.lists(tool_names, max_size=6, unique=True) for s in SERVERS}),
    granted=st.lists(patterns, max_size=5),
    probes=st.lists(st.text(min_size=1, max_size=20), max_size=10),
)
def test_the_list_filter_and_the_call_gate_never_disagree(
    catalog: dict[str, list[str]], granted: list[str], probes: list[str]
) -> None:
    grant = compile_grant(GrantSpec(tools=granted))
    for view in views(catalog):
        listed = {t.name for t in view.tools(grant)}
        candidates = listed | set(probes) | {f"{s}__{t}" for s, ts in catalog.items() for t in ts}
        candidates |= {t for ts in catalog.values() for t in ts}
        callable_ = {name for name in candidates if view.resolve_tool(grant, name) is not None}
        assert callable_ == listed


@settings(max_examples=200, deadline=None)
@given(catalog=st.fixed_dictionaries({s: st.lists(tool_names, max_size=6, unique=True) for s in SERVERS}))
def test_an_agent_with_no_grant_sees_and_calls_nothing(catalog: dict[str, list[str]]) -> None:
    for view in views(catalog):
        assert view.tools(EMPTY_GRANT) == []
        assert all(view.resolve_tool(EMPTY_GRANT, f"{s}__{t}") is None for s, ts in catalog.items() for t in ts)
        assert view.resources(EMPTY_GRANT) == [] and view.prompts(EMPTY_GRANT) == []


def test_tool_names_with_dots_split_at_the_first_dot() -> None:
    grant = compile_grant(GrantSpec(tools=["git.repo.log", "time.*"]))
    assert grant.allows_tool("git", "repo.log")
    assert not grant.allows_tool("git.repo", "log")
    assert grant.allows_tool("time", "a.b.c")


PATH_GRANT = compile_grant(
    GrantSpec(
        tools=["git.*", "time.*", "everything.echo"],
        arguments={
            "git.git_log": {"repo_path": {"path_prefix": "/srv/repos"}},
            "time.convert_time": {"target_timezone": {"enum": ["UTC", "Europe/Paris"]}},
            "everything.echo": {"message": {"pattern": "[a-z ]+", "max_length": 20}},
        },
    )
)


@given(st.text(alphabet="/.ab\x00\\", max_size=30))
def test_path_prefix_never_lets_a_path_escape(path: str) -> None:
    decision = decide(PATH_GRANT, "git", "git_log", {"repo_path": "/srv/repos/" + path}, resolve=host_realpath)
    import posixpath

    normal = posixpath.normpath("/srv/repos/" + path)
    inside = normal == "/srv/repos" or normal.startswith("/srv/repos/")
    assert decision.allowed == (inside and "\x00" not in path)


def test_argument_constraints_name_the_argument_and_the_rule() -> None:
    cases = [
        ("git", "git_log", {"repo_path": "/srv/repos/../../etc"}, "repo_path", "/srv/repos"),
        ("git", "git_log", {"repo_path": "relative/path"}, "repo_path", "absolute"),
        ("git", "git_log", {}, "repo_path", "required"),
        ("time", "convert_time", {"target_timezone": "Asia/Tokyo"}, "target_timezone", "one of"),
        ("everything", "echo", {"message": "Hello!"}, "message", "pattern"),
        ("everything", "echo", {"message": "a" * 21}, "message", "at most 20"),
        ("everything", "echo", {"message": 7}, "message", "string"),
    ]
    for server, tool, arguments, argument, rule in cases:
        decision = decide(PATH_GRANT, server, tool, arguments, resolve=host_realpath)
        assert not decision.allowed and decision.argument == argument and rule in (decision.rule or ""), decision
    assert decide(PATH_GRANT, "git", "git_log", {"repo_path": "/srv/repos/a/../b"}, resolve=host_realpath).allowed
    convert = {"target_timezone": "UTC", "time": "12:00"}
    assert decide(PATH_GRANT, "time", "convert_time", convert, resolve=host_realpath).allowed


def test_enum_compares_json_values_not_python_truthiness() -> None:
    grant = compile_grant(GrantSpec(tools=["x.y"], arguments={"x.y": {"flag": {"enum": [1]}}}))
    assert decide(grant, "x", "y", {"flag": 1}, resolve=host_realpath).allowed
    assert not decide(grant, "x", "y", {"flag": True}, resolve=host_realpath).allowed
