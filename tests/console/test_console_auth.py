"""The console's session cookie: its flags, its lifetime, what ends it, and that nothing else passes for it."""

from __future__ import annotations

import base64
import os
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.config.files import GatewayConfig
from gateway.console.auth import SESSION_TTL, ConsoleAuth, console_key, csrf_matches, is_operator
from gateway.identity.sealing import Sealer

STATE_KEY = os.urandom(32)
TOKEN = "a-console-admin-token-of-enough-length"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _gateway(url: str = "http://127.0.0.1:8765", **config: object) -> SimpleNamespace:
    settings = GatewayConfig(public_url=url, admin_token=TOKEN, **config)  # type: ignore[arg-type]
    return SimpleNamespace(config=settings, clock=Clock(), console_key=console_key(STATE_KEY))


def _request(cookie: str | None) -> Request:
    headers = [(b"cookie", cookie.encode("latin-1"))] if cookie is not None else []
    return Request({"type": "http", "method": "GET", "path": "/console", "headers": headers})


def _cookie(auth: ConsoleAuth, who: str = "admin", via: str = "admin_token") -> tuple[str, str]:
    response = Response()
    auth.start_session(response, who, via)  # type: ignore[arg-type]
    header = response.headers["set-cookie"]
    return header, header.split(";")[0]


def test_an_https_console_sets_a_host_only_secure_httponly_strict_cookie_that_holds_no_token():
    auth = ConsoleAuth(_gateway("https://gateway.example.com"))  # type: ignore[arg-type]
    header, pair = _cookie(auth)
    flags = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert pair.startswith("__Host-mcp_console=")
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= flags and "domain" not in flags
    assert "samesite=strict" in header.lower() and "path=/" in header.lower()
    assert f"max-age={int(SESSION_TTL)}" in header.lower()
    assert TOKEN not in header


def test_a_loopback_http_console_cannot_set_secure_and_says_so_in_the_name():
    header, pair = _cookie(ConsoleAuth(_gateway()))  # type: ignore[arg-type]
    assert pair.startswith("mcp_console=") and "secure" not in header.lower()


def test_a_sign_in_lasts_its_ttl_and_ends_with_sign_out_or_a_new_admin_token():
    gateway = _gateway()
    auth = ConsoleAuth(gateway)  # type: ignore[arg-type]
    _, pair = _cookie(auth)
    operator = auth.signed_in(_request(pair))
    assert operator is not None and operator.actor == "console:admin"
    assert csrf_matches(operator, operator.csrf) and not csrf_matches(operator, "") and not csrf_matches(operator, None)
    gateway.clock.now += SESSION_TTL - 1
    assert auth.signed_in(_request(pair)) is not None
    gateway.clock.now += 2
    assert auth.signed_in(_request(pair)) is None

    _, pair = _cookie(auth)
    gateway.config = gateway.config.model_copy(update={"admin_token": "a-rotated-admin-token-0123456789"})
    assert auth.signed_in(_request(pair)) is None  # rotating the token ends the sessions it opened
    gateway.config = gateway.config.model_copy(update={"admin_token": None})
    assert auth.signed_in(_request(pair)) is None

    gateway.config = gateway.config.model_copy(update={"admin_token": TOKEN})
    _, pair = _cookie(auth)
    signed_out = Response()
    auth.end_session(signed_out, auth.signed_in(_request(pair)))
    assert auth.signed_in(_request(pair)) is None  # the same cookie, replayed after sign-out


def test_an_identity_provider_sign_in_lasts_only_while_the_email_is_an_operator():
    gateway = _gateway(operators=["*@sec.example.com", "cfo@example.com"])
    auth = ConsoleAuth(gateway)  # type: ignore[arg-type]
    assert is_operator(gateway.config.operators, "Alice@SEC.example.com")
    assert not is_operator(gateway.config.operators, "alice@example.com")
    _, pair = _cookie(auth, "alice@sec.example.com", "idp")
    operator = auth.signed_in(_request(pair))
    assert operator is not None and operator.actor == "console:alice@sec.example.com"
    gateway.config = gateway.config.model_copy(update={"operators": ("cfo@example.com",)})
    assert auth.signed_in(_request(pair)) is None


def test_an_envelope_sealed_with_the_gateways_other_key_is_not_a_console_session():
    auth = ConsoleAuth(_gateway())  # type: ignore[arg-type]
    forged = Sealer(STATE_KEY).seal({"who": "admin", "via": "idp", "sid": "s", "csrf": "c"}, 2_000_000_000.0)
    assert auth.signed_in(_request(f"mcp_console={forged}")) is None


def _same_bytes(a: str, b: str) -> bool:
    try:
        return base64.urlsafe_b64decode(a + "=" * (-len(a) % 4)) == base64.urlsafe_b64decode(b + "=" * (-len(b) % 4))
    except ValueError:
        return False


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=255))
def test_no_forged_or_altered_cookie_ever_signs_in(noise, position, flip):
    auth = ConsoleAuth(_gateway())  # type: ignore[arg-type]
    _, pair = _cookie(auth)
    name, value = pair.split("=", 1)
    altered = bytearray(value.encode())
    altered[position % len(altered)] ^= flip
    for candidate in (altered.decode("latin-1"), noise.decode("latin-1"), value + noise.hex(), value[:-1]):
        if _same_bytes(candidate, value) or any(c in candidate for c in ";\r\n"):
            continue  # base64's unused low bits: a different spelling of the very same envelope
        assert auth.signed_in(_request(f"{name}={candidate}")) is None


def test_operators_must_be_emails_or_email_globs():
    assert GatewayConfig(public_url="http://127.0.0.1:1", operators=["*@example.com"]).operators == ("*@example.com",)
    for bad in (["security team"], ["alice"], ["a b@example.com"]):
        with pytest.raises(ValidationError, match="email address or an email glob"):
            GatewayConfig(public_url="http://127.0.0.1:1", operators=bad)
