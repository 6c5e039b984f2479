"""HTTP in front of and beside the MCP server: the edge (Host/Origin, bearer or DPoP auth, session
binding), the request headers read once, the SDK transports and the fast lane for plain tools/calls
(2026-07-28, and 2025-11-25 on an established MCP session), the OAuth endpoints, the admin API,
POST /v1/usage, HTTP limits.

Imports identity/, mcp/ (cancel scopes, fan-out), store/, config/ and operations.py; never app.py, which
wires each component with the collaborators it takes.
"""
