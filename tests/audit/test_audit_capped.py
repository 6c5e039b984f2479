"""Capped audit fields: a client's string of any size costs a bounded record, and still compares by hash."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.records import CAP_NAME, CAP_STRUCTURED, CAP_TEXT, NAME_FIELDS, capped
from gateway.canonical import canonical_json

_values = st.one_of(
    st.text(max_size=3000),
    st.lists(st.text(max_size=300), max_size=30),
    st.dictionaries(st.text(max_size=20), st.text(max_size=600), max_size=10),
    st.integers(),
)


@given(st.dictionaries(st.sampled_from(["tool", "client", "task", "error", "arguments_masked", "count"]), _values))
def test_every_field_over_its_cap_keeps_a_prefix_its_length_and_its_hash(fields: dict[str, Any]):
    out = capped(fields)
    for key, value in fields.items():
        text = value if isinstance(value, str) else canonical_json(value)
        if not isinstance(value, str):
            cap = CAP_STRUCTURED
        else:
            cap = CAP_NAME if key in NAME_FIELDS else CAP_TEXT
        if isinstance(value, int) or len(text) <= cap:
            assert out[key] == value and f"{key}_length" not in out
        else:
            assert out[key] == text[:cap]
            assert out[f"{key}_length"] == len(text)
            assert out[f"{key}_sha256"] == hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert len(canonical_json(out)) <= 64 * 1024
