"""The MCP identity gateway.

The package is an application: its public interface is the `mcp-gateway` command and the HTTP
contract in docs/design.md, not Python imports. It exports only its version.
"""

from importlib.metadata import version as _version

__version__ = _version("mcp-identity-gateway")

__all__ = ["__version__"]
