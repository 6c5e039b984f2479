"""Properties of `masked()`: what a server with `log_arguments: true` lets into the audit stream."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.records import MASK, masked, secret_name

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def _run(alphabet: str, low: int, high: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=low, max_size=high or low + 24)


# Every secret carries an upper-case letter or a digit, which the surrounding prose below never does.
SECRETS = st.one_of(
    _run(ALNUM, 36).map(lambda s: "ghp_" + s),
    _run(string.ascii_uppercase + string.digits, 16, 16).map(lambda s: "AKIA" + s),
    st.tuples(_run(B64URL, 12), _run(B64URL, 12), _run(B64URL, 16)).map(lambda p: f"eyJ{p[0]}.eyJ{p[1]}.{p[2]}"),
    _run(ALNUM + "-", 12).map(lambda s: "xoxb-9" + s),
    _run(ALNUM, 24).map(lambda s: "sk-proj-" + s),
    _run(ALNUM, 21).map(lambda s: "Zq7" + s),  # random-looking: upper, lower and digits, 24+ long
    _run(ALNUM, 8).map(lambda s: "postgres://admin:P4" + s + "@db.internal/app"),
    _run(ALNUM, 6).map(lambda s: "password=X9" + s),
    _run(ALNUM, 8).map(lambda s: "Bearer T0" + s),
    _run(string.ascii_letters + string.digits + "+/", 40).map(
        lambda s: f"-----BEGIN PRIVATE KEY-----\nMII{s}\n-----END PRIVATE KEY-----"
    ),
)
PROSE = st.text(string.ascii_lowercase + " ", max_size=40)
KEYS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)


def _secret_part(secret: str) -> str:
    """The part of a secret that must never be logged (a scheme or a name in front of it may stay)."""
    for marker in ("admin:", "password=", "Bearer "):
        if marker in secret:
            return secret.split(marker, 1)[1].split("@")[0]
    return secret


def _nest(value: Any, path: list[tuple[str, bool]]) -> Any:
    for key, as_list in reversed(path):
        value = [value] if as_list else {key: value}
    return value


@given(SECRETS, PROSE, PROSE, st.lists(st.tuples(KEYS, st.booleans()), max_size=4))
def test_a_secret_anywhere_in_the_arguments_is_masked(secret: str, before: str, after: str, path: list[Any]):
    arguments = _nest(f"{before} {secret} {after}", path)
    logged = json.dumps(masked(arguments))
    assert _secret_part(secret) not in logged
    assert MASK in logged


@given(
    st.sampled_from(
        [
            "password",
            "api_key",
            "apiKey",
            "X-Api-Key",
            "Authorization",
            "client_secret",
            "dbPassword",
            "access_token",
            "refreshToken",
            "private_key",
            "session-cookie",
            "pin",
        ]
    ),
    st.one_of(st.text(max_size=20), st.integers(), st.lists(st.text(max_size=5)), st.dictionaries(KEYS, KEYS)),
)
def test_a_value_under_a_secret_looking_name_is_masked_whole(name: str, value: Any):
    assert secret_name(name)
    assert masked({"outer": {name: value}}) == {"outer": {name: MASK}}


@given(
    PROSE.filter(lambda t: not {"bearer", "basic", "token"} & set(t.split())), KEYS.filter(lambda k: not secret_name(k))
)
def test_plain_values_under_plain_names_are_logged_as_they_are(text: str, key: str):
    assert masked({key: [text, 42, True, None]}) == {key: [text, 42, True, None]}


@given(SECRETS, PROSE)
def test_masking_is_idempotent(secret: str, prose: str):
    once = masked({"message": f"{prose} {secret}"})
    assert masked(once) == once


def test_a_bearer_credential_after_another_scheme_word_is_masked():
    """Regression: in "basic Bearer <token>" the first scheme word took "Bearer" as its credential."""
    logged = masked("basic Bearer T000000000 ")
    assert "T000000000" not in logged
