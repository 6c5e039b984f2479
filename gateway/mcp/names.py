"""Exposed names on the aggregate `/mcp` endpoint.

Tools and prompts become `<server>__<name>`; where that does not fit
`^[A-Za-z0-9_-]{1,64}$` (what LLM APIs accept), disallowed characters become
`_` and an over-long name is cut and given a short hash suffix. Resource URIs
become `<server>+<uri>` (`+` is legal in a URI scheme and never in a server
name, so the split is unambiguous). On `/servers/<name>/mcp` names are kept.
"""

from __future__ import annotations

import hashlib
import re

SEPARATOR = "__"
_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 64
_HASH_LEN = 8


def exposed_name(server: str, name: str) -> str:
    """The `/mcp` name of a server's tool or prompt."""
    joined = f"{server}{SEPARATOR}{name}"
    safe = _ALLOWED.sub("_", joined)
    if len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(joined.encode()).hexdigest()[:_HASH_LEN]
    return f"{safe[: MAX_NAME - _HASH_LEN - 1]}_{digest}"


def exposed_uri(server: str, uri: str) -> str:
    """The `/mcp` form of a server's resource URI or URI template."""
    return f"{server}+{uri}"


def split_uri(exposed: str) -> tuple[str, str] | None:
    """Reverse `exposed_uri`; None when the URI is not in the gateway's namespace."""
    server, plus, uri = exposed.partition("+")
    if not plus or not server or not uri:
        return None
    return server, uri


class NameCollision(ValueError):
    """Two upstream names map to one exposed name."""


class NameMap:
    """Exposed name <-> (server, original name), built once per catalog change."""

    def __init__(self) -> None:
        self._forward: dict[tuple[str, str], str] = {}
        self._reverse: dict[str, tuple[str, str]] = {}

    def add(self, server: str, name: str) -> str:
        """Register a name and return its exposed form.

        Raises:
            NameCollision: another (server, name) already owns the exposed form.
        """
        key = (server, name)
        if key in self._forward:
            return self._forward[key]
        exposed = exposed_name(server, name)
        owner = self._reverse.get(exposed)
        if owner is not None and owner != key:
            raise NameCollision(
                f"{server}.{name} and {owner[0]}.{owner[1]} both map to the exposed tool name {exposed!r}"
            )
        self._forward[key] = exposed
        self._reverse[exposed] = key
        return exposed

    def resolve(self, exposed: str) -> tuple[str, str] | None:
        return self._reverse.get(exposed)

    def exposed(self, server: str, name: str) -> str | None:
        return self._forward.get((server, name))
