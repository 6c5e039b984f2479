"""Sign-in for interactive agents: the gateway as an OAuth 2.1 authorization server.

    clients.py     who the OAuth client is: a Client ID Metadata Document (cimd.py) or a registration
    cimd.py        fetching metadata documents: trust globs, SSRF-safe, bounded, cached
    register.py    RFC 7591 dynamic registration (clients.dynamic_registration)
    rp.py          the gateway as an OIDC relying party of the company's identity provider
    flow.py        GET /oauth/authorize, GET /oauth/callback, POST /oauth/consent
    pages.py       the server-rendered consent and error pages (escaped, strict CSP)
    identity.py    `interactive:` templates -> one agent per (human, client)
    grants.py      POST /oauth/token: authorization_code and refresh_token (rotation, reuse detection)

A sign-in is one session: the code opens it, refresh tokens renew its short access tokens, and a
refresh token presented twice revokes it. Codes, refresh tokens, consent and registrations live in
the store (`login_items`), so every replica honours them; the in-flight sign-in (between the
authorization request and the consent) lives in a sealed, HttpOnly cookie.
"""
