"""Upstream tool servers: supervised connections, their catalogs, and forwarding."""

from gateway.upstream.connection import Connection, Downstream
from gateway.upstream.hub import Catalog, Upstream, Upstreams

__all__ = ["Catalog", "Connection", "Downstream", "Upstream", "Upstreams"]
