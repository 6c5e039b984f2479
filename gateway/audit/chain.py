"""The hash chain: each record's `hash` covers the record without `hash`.

SHA-256 over the record's canonical body (`gateway.canonical.chained`: sorted
keys, no whitespace, UTF-8).
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.canonical import chained

GENESIS = "0" * 64


def _body(record: dict[str, Any]) -> bytes:
    """The canonical record without its `hash` field (copied only when it has one)."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    return chained(record)


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
