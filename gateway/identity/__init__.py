"""Who is calling and what they may do: agents, sessions, grants (policy.py), signing keys, session
tokens, agent credentials, humans' identity providers, workload identity, DPoP."""
