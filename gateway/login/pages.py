"""The sign-in's own pages: consent and errors, rendered on the server.

Every string a client or identity provider controls is HTML-escaped; the pages carry no script and
no inline style, under a CSP that allows nothing but a form posting back here (and the redirect the
form's answer makes to the client), and they cannot be framed.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

from gateway.identity.policy import Grant


def _headers(form_targets: str = "") -> dict[str, str]:
    csp = (
        "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        f"form-action 'self'{(' ' + form_targets) if form_targets else ''}"
    )
    return {
        "content-security-policy": csp,
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
    }


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width"></head><body><main>{body}</main></body></html>'
    )


def error_page(message: str, status: int = 400) -> HTMLResponse:
    body = f'<h1>Sign-in failed</h1><p id="error">{escape(message)}</p>'
    return HTMLResponse(_page("Sign-in failed", body), status_code=status, headers=_headers())


def redirect_origin(uri: str) -> str:
    """What the consent page's CSP must allow the form's answer to redirect to."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


def describe(grant: Grant) -> list[str]:
    """What the grant allows, in plain words."""
    lines = []
    tools = [f"{server}.{tool}" for server, tool in grant.tools]
    lines.append(f"call the tools {', '.join(tools)}" if tools else "call no tools")
    if grant.resources:
        lines.append(f"read resources of {', '.join(grant.resources)}")
    if grant.prompts:
        lines.append(f"get prompts of {', '.join(grant.prompts)}")
    budget = grant.budget
    for name in ("session_ttl", "idle_timeout", "session_tokens", "session_calls", "daily_tokens"):
        value = getattr(budget, name, None)
        if value is not None:
            unit = " s" if name in ("session_ttl", "idle_timeout") else ""
            lines.append(f"{name.replace('_', ' ')}: {value:g}{unit}")
    return lines


def consent_page(
    *, client_name: str, client_id: str, redirect_uri: str, human: str, agent: str, grant: Grant, csrf: str
) -> HTMLResponse:
    host = urlsplit(redirect_uri).hostname or redirect_uri
    allows = "".join(f"<li>{escape(line)}</li>" for line in describe(grant))
    body = (
        "<h1>Allow access?</h1>"
        f'<p><strong id="client-name">{escape(client_name)}</strong> '
        f'(<span id="client-id">{escape(client_id)}</span>) wants to act for '
        f'<strong id="human">{escape(human)}</strong> as the agent <code id="agent">{escape(agent)}</code>.</p>'
        f'<p>After you answer, you go back to <strong id="redirect-host">{escape(host)}</strong>.</p>'
        f'<p>It will be able to:</p><ul id="grant">{allows}</ul>'
        '<form method="post" action="/oauth/consent">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button type="submit" name="decision" value="approve" id="approve">Allow</button> '
        '<button type="submit" name="decision" value="deny" id="deny">Deny</button>'
        "</form>"
    )
    return HTMLResponse(_page("Allow access?", body), headers=_headers(redirect_origin(redirect_uri)))
