"""Grants compiled once into pure decisions.

One compiled `Grant` answers every question about an agent's scope: which
tools it may see and call (`allows_tool`, asked by the one gate, views.py's
`View.exposes`, for tools/list and tools/call alike, so they cannot disagree),
which servers' resources and prompts it may use, and whether a call's
arguments meet the grant's constraints (`decide`, asked once the gate let the
call through). Default deny: an empty grant allows nothing.

`decide` is pure: a `path_prefix` rule needs to know where a path really
leads (symbolic links), and the caller passes that in as `resolve`. The
gateway passes `host_realpath`, the one function here that reads the disk.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.canonical import ascii_canonical
from gateway.config.files import ArgumentRule, Budget, GrantSpec, glob_matches

Resolver = Callable[[str], str]
"""Where an absolute path really leads: every symbolic link followed."""


def host_realpath(path: str) -> str:
    """Where `path` leads on this host, the way the kernel would walk it when a tool server opens it.

    `os.path.realpath` (not strict): every existing component is resolved, symbolic links included, and
    `..` after a link goes to the parent of the link's target; a tail that does not exist yet stays as
    text, so a path still to be created is judged by its deepest existing ancestor.
    """
    return os.path.realpath(path)


@dataclass(frozen=True)
class Rule:
    """A compiled `ArgumentRule`."""

    enum: tuple[Any, ...] | None
    path_prefix: str | None
    pattern: re.Pattern[str] | None
    max_length: int | None

    @classmethod
    def compile(cls, spec: ArgumentRule) -> Rule:
        prefix = spec.path_prefix
        if prefix is not None:
            prefix = posixpath.normpath(prefix)
        return cls(
            enum=spec.enum,
            path_prefix=prefix,
            pattern=re.compile(spec.pattern) if spec.pattern is not None else None,
            max_length=spec.max_length,
        )

    def violation(self, value: Any, resolve: Resolver) -> str | None:
        """Why `value` breaks this rule, or None when it complies."""
        if self.enum is not None and not any(_same_json(value, allowed) for allowed in self.enum):
            return f"must be one of {list(self.enum)}"
        if self.max_length is not None:
            if not isinstance(value, str):
                return "must be a string"
            if len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
        if self.pattern is not None:
            if not isinstance(value, str) or not self.pattern.fullmatch(value):
                return f"must fully match the pattern {self.pattern.pattern!r}"
        if self.path_prefix is not None:
            return _path_violation(value, self.path_prefix, resolve)
        return None


def _same_json(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, 1.0 is 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _path_violation(value: Any, prefix: str, resolve: Resolver) -> str | None:
    """Inside `prefix` as text and where it really leads.

    A tool server may read the path as the kernel does (`a/link/..` is the parent of the link's target)
    or normalise it as text first (`a`), then open that: both readings must stay under the prefix's
    own real path.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        return f"must be a path under {prefix}"
    if not value.startswith("/"):
        return f"must be an absolute path under {prefix}"
    normal = posixpath.normpath(value)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if not _under(normal, prefix):
        return f"must be a path under {prefix} (normalised: {normal})"
    real_prefix = resolve(prefix)
    if not all(_under(resolve(reading), real_prefix) for reading in (value, normal)):
        # The link's target is not named: it is the host's layout, not the agent's to learn.
        return f"must be a path under {prefix} (it leads outside through a symbolic link)"
    return None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "granted" | "argument"
    argument: str | None = None
    rule: str | None = None


ALLOW = Decision(True, "granted")


@dataclass(frozen=True)
class Grant:
    """An agent's grant, compiled. Immutable; rebuilt when agents.yaml changes."""

    version: str
    tools: tuple[tuple[str, str], ...]
    resources: tuple[str, ...]
    prompts: tuple[str, ...]
    arguments: Mapping[tuple[str, str], Mapping[str, Rule]]
    budget: Budget
    alerts: tuple[float, ...]
    _tool_cache: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)

    def allows_tool(self, server: str, tool: str) -> bool:
        """The one answer for both tools/list and tools/call."""
        key = (server, tool)
        cached = self._tool_cache.get(key)
        if cached is None:
            cached = any(glob_matches(s, server) and glob_matches(t, tool) for s, t in self.tools)
            if len(self._tool_cache) < 10_000:
                self._tool_cache[key] = cached
        return cached

    def allows_resources(self, server: str) -> bool:
        return any(glob_matches(pattern, server) for pattern in self.resources)

    def allows_prompts(self, server: str) -> bool:
        return any(glob_matches(pattern, server) for pattern in self.prompts)

    def reaches(self, server: str, tools: Iterable[str]) -> bool:
        """Whether the grant gives anything on `server`: one of its `tools`, its resources or its prompts.

        What lets a request touch a server at all (logging/setLevel, starting a per-session connection).
        """
        return (
            self.allows_resources(server)
            or self.allows_prompts(server)
            or any(self.allows_tool(server, tool) for tool in tools)
        )


def decide(grant: Grant, server: str, tool: str, arguments: Mapping[str, Any] | None, *, resolve: Resolver) -> Decision:
    """Whether a call's arguments meet the grant's constraints on `server.tool`. Whether the tool is granted
    at all is the gate's question (`View.exposes`), answered before this one is asked.

    Pure: no I/O, no clock; `path_prefix` rules learn where a path really leads from `resolve` (the gateway
    passes `host_realpath`)."""
    rules = grant.arguments.get((server, tool))
    if not rules:
        return ALLOW
    arguments = arguments or {}
    for name, rule in rules.items():
        if name not in arguments:
            return Decision(False, "argument", name, "is required by the grant's constraint")
        problem = rule.violation(arguments[name], resolve)
        if problem is not None:
            return Decision(False, "argument", name, problem)
    return ALLOW


def grant_version(spec: GrantSpec) -> str:
    """A short, stable hash of the grant's content; recorded in tokens and audit."""
    canonical = ascii_canonical(spec.model_dump(mode="json"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_compiled: dict[str, Grant] = {}


def compile_grant(spec: GrantSpec) -> Grant:
    """Compile a grant spec once; equal specs share one compiled grant."""
    version = grant_version(spec)
    grant = _compiled.get(version)
    if grant is None:
        grant = _compiled[version] = _compile(spec, version)
    return grant


def _compile(spec: GrantSpec, version: str) -> Grant:
    return Grant(
        version=version,
        tools=tuple(_split_tool_ref(ref) for ref in spec.tools),
        resources=spec.resources,
        prompts=spec.prompts,
        arguments={
            _split_tool_ref(ref): {arg: Rule.compile(rule) for arg, rule in rules.items()}
            for ref, rules in spec.arguments.items()
        },
        budget=spec.budget,
        alerts=spec.alerts,
    )


def _split_tool_ref(ref: str) -> tuple[str, str]:
    server, _, tool = ref.partition(".")
    return server, tool


EMPTY_GRANT = compile_grant(GrantSpec())
