"""Exposed names on /mcp: what LLM APIs accept, reversible, and collisions caught."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mcp.names import NameCollision, NameMap, exposed_name, exposed_uri, split_uri

LLM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
servers = st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True)


@given(server=servers, tool=st.text(min_size=1, max_size=200))
def test_every_exposed_tool_name_fits_what_llm_apis_accept(server: str, tool: str) -> None:
    assert LLM_NAME.match(exposed_name(server, tool))


def test_simple_names_are_server_double_underscore_tool() -> None:
    assert exposed_name("time", "get_current_time") == "time__get_current_time"
    assert exposed_name("git", "repo.log") == "git__repo_log"
    long = exposed_name("files", "x" * 100)
    assert len(long) == 64 and long.startswith("files__xxx") and long != exposed_name("files", "x" * 99)


@given(server=servers, uri=st.text(min_size=1))
def test_resource_uris_round_trip(server: str, uri: str) -> None:
    assert split_uri(exposed_uri(server, uri)) == (server, uri)


def test_two_names_that_map_to_one_exposed_name_are_a_collision() -> None:
    names = NameMap()
    names.add("git", "repo.log")
    with pytest.raises(NameCollision, match="git.repo_log and git.repo.log"):
        names.add("git", "repo_log")
    assert names.resolve("git__repo_log") == ("git", "repo.log")
