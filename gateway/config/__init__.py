"""The configuration files (files.py: gateway.yaml, agents.yaml and their models), durations, the
0700 directories they name, and hot reload.

files.py, durations.py and dirs.py import only errors.py (so anything may import them), live.py only
files.py; reload.py imports http/, mcp/ and upstream/ to apply a change to the running components.
"""
