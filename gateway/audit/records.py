"""What goes into audit records besides identity: fingerprints, never raw payloads.

Arguments and results are fingerprinted with HMAC-SHA-256 under a gateway key
(plain hashes of low-entropy values like "yes" or a user id can be reversed by
guessing), so two records can be compared without the stream holding the data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from pydantic import BaseModel


class Fingerprints:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def of(self, value: Any) -> str:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
        return "hmac-sha256:" + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]
