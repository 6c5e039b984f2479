"""Reviewed tool definitions: pins and quarantine (definitions.py), poisoning lint, the pin files.

Imports upstream/, mcp/ (names), audit/ and metrics.py.
"""
