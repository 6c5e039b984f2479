"""The MCP server agents talk to (server.py), the per-call pipeline (pipeline.py), the catalog views
projected through a grant, names, input-request exchanges and list-change fan-out.

Imports identity/, spend/, upstream/, audit/ and telemetry.py; never http/.
"""
