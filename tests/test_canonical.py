"""Canonical JSON: each variant writes, for any JSON value, exactly the bytes of the stdlib expression it replaced.

The oracles below are those expressions, kept here verbatim: if a variant's bytes changed, every audit chain,
pin, fingerprint and key id taken before the change would stop matching.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import canonical
from gateway.audit.records import Fingerprints

# The values at the edges: floats where orjson and Python part ways, integers past 64 bits, escapes.
EDGES = [
    1e-05,
    1e-07,
    -2.5e-09,
    9.999e-05,
    0.0001,
    1e16,
    1.5e300,
    5e-324,
    -0.0,
    2**63 - 1,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    '\x00\x1f\x7f\u2028\ufeff\U0001f600é"\\',
    float("nan"),
    float("inf"),
    "\ud800",
]

ORACLES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    # name: (the variant, the stdlib expression it replaced)
    "chained": (
        canonical.chained,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),
    ),
    "canonical_json": (
        canonical.canonical_json,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str),
    ),
    "fingerprinted": (
        canonical.fingerprinted,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode(),
    ),
    "pinned": (
        canonical.pinned,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
    ),
    "compact": (canonical.compact, lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False)),
    "ascii_canonical": (
        canonical.ascii_canonical,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    ),
    "envelope_body": (canonical.envelope_body, lambda v: json.dumps(v, separators=(",", ":")).encode()),
}


# Mostly valid Unicode (the fast path), sometimes with lone surrogates (the stdlib's answer, or its error).
TEXT = st.text(max_size=12) | st.text(st.characters(exclude_categories=()), max_size=12)


def _values() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats()
        | st.floats(min_value=-1e-3, max_value=1e-3)
        | st.sampled_from(EDGES[:-1])
        | TEXT
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
        max_leaves=30,
    )


def _outcome(fn: Callable[[Any], Any], value: Any) -> tuple[str, Any]:
    """What a serialisation gives: its bytes or text, or the type of the error it raises."""
    try:
        return "ok", fn(value)
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        return "error", type(exc)


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_each_variant_matches_its_stdlib_expression_at_the_edges(name: str, value: Any):
    new, old = ORACLES[name]
    assert _outcome(new, value) == _outcome(old, value)
    assert _outcome(new, {"v": value, "n": [value]}) == _outcome(old, {"v": value, "n": [value]})


@pytest.mark.parametrize("name", sorted(ORACLES))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
@example(data=None)  # the empty object, always
def test_each_variant_matches_its_stdlib_expression_for_random_json(name: str, data: st.DataObject | None):
    new, old = ORACLES[name]
    value = {} if data is None else data.draw(_values())
    assert _outcome(new, value) == _outcome(old, value)


def test_a_typical_audit_record_is_written_without_the_stdlib(monkeypatch: pytest.MonkeyPatch):
    """The point of orjson: the record and the fingerprint on every call's path take the fast path."""
    record = {
        "ts": 1764603520.123456,
        "event": "tool.result",
        "gateway": "gw-1",
        "agent": "alice-bot",
        "tool": "echo",
        "outcome": "ok",
        "latency_ms": 1.234,
        "response_tokens": 34,
        "seq": 12,
        "prev_hash": "ab" * 32,
        "arguments_masked": {"text": "héllo", "n": [1, 2.5, None, True]},
    }
    expected = canonical.chained(record), canonical.fingerprinted(record["arguments_masked"])

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("the stdlib was used")

    monkeypatch.setattr(canonical.json, "dumps", refuse)
    assert (canonical.chained(record), canonical.fingerprinted(record["arguments_masked"])) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=80), st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_a_fingerprint_is_the_one_shot_hmac_of_its_bytes_whatever_came_before(key: bytes, payloads: list[bytes]):
    """The keyed state is hashed once and copied for each value: the fingerprints taken before that change still
    match, and no value leaks into the next one's."""
    fingerprints = Fingerprints(key)
    for data in payloads:
        assert fingerprints.of_bytes(data) == "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]
