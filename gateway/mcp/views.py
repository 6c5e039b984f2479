"""What one endpoint shows: the aggregate `/mcp` view and each `/servers/<name>/mcp` view.

A view projects the upstream catalogs through an agent's grant. Names are
namespaced on the aggregate view (see names.py) and original on a server's own
view. The list filter and the call gate are one function (`View.exposes`), so
what an agent can list is exactly what it can call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import mcp_types as types

from gateway.identity.policy import Grant
from gateway.mcp.names import NameCollision, NameMap, exposed_uri, split_uri
from gateway.upstream import Upstream, Upstreams

log = logging.getLogger("gateway.views")


class Names:
    """Exposed names for the aggregate view, rebuilt whenever a catalog changes."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams
        self.tools = NameMap()
        self.prompts = NameMap()

    def rebuild(self, *, strict: bool = False) -> None:
        """Map every listed tool and prompt. A collision fails startup (`strict`) or hides the later name.

        Raises:
            NameCollision: with `strict`, two names map to one exposed name.
        """
        tools, prompts = NameMap(), NameMap()
        for name in sorted(self.upstreams.servers):
            upstream = self.upstreams.servers[name]
            for kind, names, target in (
                ("tool", upstream.catalog.all_tools, tools),
                ("prompt", upstream.catalog.prompts, prompts),
            ):
                for item in sorted(names):
                    try:
                        target.add(name, item)
                    except NameCollision as exc:
                        if strict:
                            raise
                        log.error("hiding %s %s.%s: %s", kind, name, item, exc)
        self.tools, self.prompts = tools, prompts


_RESOURCE_BLOCKS = (types.ResourceLink, types.EmbeddedResource)  # built once, unlike an `X | Y`


class View:
    """One endpoint's projection. `server` None is the aggregate `/mcp` view."""

    def __init__(self, upstreams: Upstreams, names: Names, server: str | None) -> None:
        self.upstreams = upstreams
        self.names = names
        self.server = server

    def _servers(self) -> Iterator[Upstream]:
        if self.server is None:
            yield from self.upstreams.servers.values()
        elif (upstream := self.upstreams.get(self.server)) is not None:
            yield upstream

    def granted_servers(self, grant: Grant) -> list[Upstream]:
        """The servers of this view the grant gives a listed tool, resources or prompts on."""
        return [upstream for upstream in self._servers() if grant.reaches(upstream.name, upstream.tools())]

    # tools

    def exposes(self, grant: Grant, upstream: Upstream, tool: str) -> str | None:
        """The gate: the name this view shows `tool` of `upstream` under to this grant; None where it does not.

        `tool` is one of `upstream.tools()` (listed, allowed by its manifest, not quarantined). tools/list
        shows exactly the tools this names and tools/call reaches exactly those, so they cannot disagree.
        """
        if not grant.allows_tool(upstream.name, tool):
            return None
        return tool if self.server is not None else self.names.tools.exposed(upstream.name, tool)

    def tools(self, grant: Grant) -> list[types.Tool]:
        listed = []
        for upstream in self._servers():
            for name, tool in upstream.tools().items():
                exposed = self.exposes(grant, upstream, name)
                if exposed is not None:
                    listed.append(tool if exposed == name else tool.model_copy(update={"name": exposed}))
        return listed

    def resolve_tool(self, grant: Grant, exposed: str) -> tuple[Upstream, str] | None:
        """The upstream and tool an exposed name calls, if the gate shows it to this grant under that name."""
        target = (self.server, exposed) if self.server is not None else self.names.tools.resolve(exposed)
        if target is None:
            return None
        upstream = self.upstreams.get(target[0])
        if upstream is None or target[1] not in upstream.catalog.tools or target[1] in upstream.hidden:
            return None  # not one of upstream.tools() (asked without building that mapping)
        if self.exposes(grant, upstream, target[1]) != exposed:
            return None
        return upstream, target[1]

    # prompts

    def prompts(self, grant: Grant) -> list[types.Prompt]:
        listed = []
        for upstream in self._servers():
            if not grant.allows_prompts(upstream.name):
                continue
            for name, prompt in upstream.catalog.prompts.items():
                exposed = name if self.server is not None else self.names.prompts.exposed(upstream.name, name)
                if exposed is not None:
                    listed.append(prompt if exposed == name else prompt.model_copy(update={"name": exposed}))
        return listed

    def resolve_prompt(self, grant: Grant, exposed: str) -> tuple[Upstream, str] | None:
        """The upstream and original name of a granted, listed prompt; None otherwise."""
        target = (self.server, exposed) if self.server is not None else self.names.prompts.resolve(exposed)
        if target is None:
            return None
        upstream = self.upstreams.get(target[0])
        if upstream is None or not grant.allows_prompts(upstream.name) or target[1] not in upstream.catalog.prompts:
            return None
        return upstream, target[1]

    # resources

    def resources(self, grant: Grant) -> list[types.Resource]:
        return [
            resource.model_copy(update={"uri": self.uri_out(upstream.name, resource.uri)})
            for upstream in self._servers()
            if grant.allows_resources(upstream.name)
            for resource in upstream.catalog.resources
        ]

    def templates(self, grant: Grant) -> list[types.ResourceTemplate]:
        return [
            template.model_copy(update={"uri_template": self.uri_out(upstream.name, template.uri_template)})
            for upstream in self._servers()
            if grant.allows_resources(upstream.name)
            for template in upstream.catalog.templates
        ]

    def uri_out(self, server: str, uri: str) -> str:
        return uri if self.server is not None else exposed_uri(server, uri)

    def result_out(self, server: str, result: types.CallToolResult) -> types.CallToolResult:
        """Resource links and embedded resources in a tool result, named as this view names resources."""
        if self.server is not None or not any(isinstance(c, _RESOURCE_BLOCKS) for c in result.content):
            return result
        content: list[types.ContentBlock] = []
        for block in result.content:
            if isinstance(block, types.ResourceLink):
                block = block.model_copy(update={"uri": exposed_uri(server, block.uri)})
            elif isinstance(block, types.EmbeddedResource):
                inner = block.resource.model_copy(update={"uri": exposed_uri(server, block.resource.uri)})
                block = block.model_copy(update={"resource": inner})
            content.append(block)
        return result.model_copy(update={"content": content})

    def resolve_uri(self, grant: Grant, exposed: str) -> tuple[Upstream, str] | None:
        """The upstream and original URI of a resource this agent may read; None otherwise."""
        target = (self.server, exposed) if self.server is not None else split_uri(exposed)
        if target is None:
            return None
        upstream = self.upstreams.get(target[0])
        if upstream is None or not grant.allows_resources(upstream.name):
            return None
        return upstream, target[1]
