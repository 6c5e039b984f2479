"""Canonical JSON: every serialisation whose exact bytes something depends on (a hash, a count, a key id).

Each function here is one deliberate variant, named for what relies on it; its
docstring says why it differs from the others. Their bytes are fixed forever: a
hash chain written today must verify tomorrow, a pin must match the definition
it was taken from, a key keeps its id. Every variant is defined by a stdlib
`json.dumps` expression (the oracle tests/test_canonical.py holds each against).

Where orjson writes exactly those bytes it writes them (about 10x faster: the
audit record and the arguments' fingerprint are on every call's path); it does
for sorted or insertion-ordered, compact, non-ASCII-as-UTF-8 output of the plain
JSON types, except for
- floats below 1e-4 (orjson writes `1e-6` and `0.00001`, Python `1e-06` and `1e-05`),
  NaN and the infinities (orjson writes `null`), and types beyond JSON's (for which
  `default=str` or a TypeError decides): `_plain` sends these to the stdlib;
- integers beyond 64 bits, lone surrogates, nesting past 254 levels: orjson refuses
  them, and the stdlib then gives the variant's own answer (its text, or its error).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

_SMALLEST_EXACT = 1e-4  # orjson and Python write every finite float from here up (and 0.0) the same way
# isinstance() tuples, built once: an `X | Y` in the call builds a new union object on every evaluation
_SCALAR = (str, int)
_SEQUENCE = (list, tuple)
_CONTAINER = (dict, list, tuple)


def chained(record: dict[str, Any]) -> bytes:
    """An audit record's canonical body, the bytes its `hash` covers (gateway/audit/chain.py).

    Sorted keys, no whitespace, UTF-8 (RFC 8785 style for the values the gateway writes). NaN and the
    infinities raise ValueError and lone surrogates UnicodeEncodeError: a record the chain cannot carry
    faithfully is never written.
    """
    fast = _orjson(record, orjson.OPT_SORT_KEYS)
    if fast is not None:
        return fast
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical_json(value: Any) -> str:
    """One text for equal JSON values: arguments are fingerprinted, metered and capped as this.

    Sorted keys, no whitespace, non-ASCII as is. Lenient, because it reads what clients send: NaN and
    the infinities as `NaN`/`Infinity`, any other type as its `str()`, lone surrogates kept.
    """
    fast = _orjson(value, orjson.OPT_SORT_KEYS)
    if fast is not None:
        return fast.decode()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprinted(value: Any) -> bytes:
    """`canonical_json(value)` in UTF-8: the bytes an argument or result fingerprint is taken over.

    Raises:
        UnicodeEncodeError: the value holds a lone surrogate.
    """
    fast = _orjson(value, orjson.OPT_SORT_KEYS)
    if fast is not None:
        return fast
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def pinned(value: Any) -> bytes:
    """A tool definition's bytes, the ones its pin hashes (gateway/pins/definitions.py).

    Like `fingerprinted`, but a lone surrogate in a server's definition is hashed as it came
    (`surrogatepass`), never an error: a definition that cannot be pinned could not be quarantined either.
    """
    fast = _orjson(value, orjson.OPT_SORT_KEYS)
    if fast is not None:
        return fast
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def compact(value: Any) -> str:
    """Insertion order, no whitespace, non-ASCII as is: a result's structured content, as the text its tokens
    are counted on (the order it was sent in, not sorted: the model reads it so)."""
    fast = _orjson(value, 0)
    if fast is not None:
        return fast.decode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def ascii_canonical(value: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII escaped: RFC 7638 JWK thumbprints (key ids, DPoP `jkt`) and grant versions.

    The escaping is part of what those hashes were defined over; orjson cannot escape, so this stays stdlib.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def envelope_body(value: Any) -> bytes:
    """An envelope's body before encryption (gateway/identity/sealing.py): compact, insertion order, ASCII.

    Never hashed nor compared, only parsed back; kept byte for byte so envelopes keep their sizes.
    """
    return json.dumps(value, separators=(",", ":")).encode()


def _orjson(value: Any, option: int) -> bytes | None:
    """orjson's bytes where they are the stdlib's (see the module docstring), else None."""
    if not _plain(value):
        return None
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        return None


def _plain(value: Any) -> bool:
    """Whether `value` holds only types orjson writes exactly as the stdlib does."""
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, _SEQUENCE):
        items = value
    else:
        return _plain_leaf(value)
    for item in items:
        kind = type(item)
        if kind is str or kind is int or item is None or isinstance(item, _SCALAR):  # exact types first: quicker
            continue
        if isinstance(item, _CONTAINER):
            if not _plain(item):
                return False
        elif not _plain_leaf(item):
            return False
    return True


def _plain_leaf(value: Any) -> bool:
    if isinstance(value, _SCALAR) or value is None:
        return True
    return isinstance(value, float) and (value == 0.0 or _SMALLEST_EXACT <= abs(value) < math.inf)
