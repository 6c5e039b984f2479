"""Token metering of every payload that crosses the gateway.

A fast estimator by default: about four characters of JSON text per token.
Binary content (images, audio, blobs) is counted by a fixed rule instead of
its base64 length, which would overstate what a model is charged.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

_CHARS_PER_TOKEN = 4.0
BINARY_TOKENS = 85  # per image, audio clip or blob (documented in README)


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN) if text else 0


def count(payload: Any) -> int:
    """Estimated tokens in a JSON-able payload or an MCP model."""
    if payload is None:
        return 0
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json", by_alias=True, exclude_none=True)
    return _walk(payload)


def _walk(value: Any) -> int:
    if isinstance(value, dict):
        if value.get("type") in ("image", "audio") and "data" in value:
            return BINARY_TOKENS
        if "blob" in value and isinstance(value.get("blob"), str):
            return BINARY_TOKENS + _text_tokens(str(value.get("uri", "")))
        if "text" in value and isinstance(value["text"], str) and len(value) <= 4:
            return _text_tokens(value["text"])
        return sum(_text_tokens(str(k)) + _walk(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_walk(v) for v in value)
    if isinstance(value, str):
        return _text_tokens(value)
    return _text_tokens(json.dumps(value))
