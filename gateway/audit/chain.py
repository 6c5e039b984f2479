"""The hash chain: each record's `hash` covers the record without `hash`.

SHA-256 over JSON with sorted keys, no whitespace, UTF-8 (RFC 8785 style for
the values the gateway writes: strings, integers, booleans, null, and finite
floats, which Python renders in their shortest round-trip form).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _body(record: dict[str, Any]) -> bytes:
    """The canonical record without its `hash` field (copied only when it has one)."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    return canonical(record)


def record_hash(record: dict[str, Any]) -> str:
    """The hash of a record, ignoring any `hash` field it already carries."""
    return hashlib.sha256(_body(record)).hexdigest()


def seal(record: dict[str, Any]) -> tuple[str, bytes]:
    """The record's hash, and its line: the canonical body with `hash` appended, serialised once.

    Only the body is canonical; the line is ordinary JSON, so readers parse it
    and verifiers recompute the hash from the parsed record.
    """
    body = _body(record)
    digest = hashlib.sha256(body).hexdigest()
    return digest, body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
