"""Who is calling: signing keys, session tokens, agent credentials, OAuth endpoints."""
