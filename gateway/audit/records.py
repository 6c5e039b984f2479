"""What goes into audit records besides identity: fingerprints, never raw payloads.

Arguments and results are fingerprinted with HMAC-SHA-256 under a gateway key
(plain hashes of low-entropy values like "yes" or a user id can be reversed by
guessing), so two records can be compared without the stream holding the data.
Every field is capped (`capped`, applied by `draft` as a sink emits a record), so a client's string of
any size costs a bounded record.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from pydantic import BaseModel

from gateway.audit.events import Event
from gateway.canonical import canonical_json, fingerprinted

# Each record written before forwarding -> the one outcome record written after it (same call_id).
RESULT_EVENTS: dict[str, Event] = {
    Event.TOOL_CALL: Event.TOOL_RESULT,
    Event.RESOURCE_READ: Event.RESOURCE_RESULT,
    Event.PROMPT_GET: Event.PROMPT_RESULT,
    Event.COMPLETION_COMPLETE: Event.COMPLETION_RESULT,
}
SESSION_ENDED = "session_ended"  # the deny reason when the session ended between authentication and admission


class Fingerprints:
    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per value: the key's two blocks hashed once

    def of(self, value: Any) -> str:
        """A JSON value canonically (sorted keys: equal values, equal fingerprints, whatever their key order); a
        model (a result) as its own JSON, in its fields' order, which is fixed by its type."""
        if isinstance(value, BaseModel):
            return self.of_bytes(value.model_dump_json(by_alias=True, exclude_none=True).encode())
        return self.of_bytes(fingerprinted(value))

    def of_bytes(self, data: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(data)
        return "hmac-sha256:" + mac.hexdigest()[:32]


# ---------------------------------------------------------------- capped fields

# Every field of every record is capped where records are built (`draft`), so a client's string
# of any size (a tool name, a client name, a task) costs a bounded number of bytes. A string field
# longer than its cap keeps its first `cap` characters and gains two fields beside it:
# `<field>_length` (its length in characters) and `<field>_sha256` (the hex SHA-256 of its UTF-8),
# so equal values still compare equal and the record stays one flat, canonical JSON object for the
# chain. An object or list field is capped on its canonical JSON (CAP_STRUCTURED): past the cap, the
# field holds that JSON's prefix as a string, with the same two fields beside it.
CAP_NAME = 256  # identifiers and names
CAP_TEXT = 1024  # free text: errors, reasons, tasks and every other string field
CAP_STRUCTURED = 4096  # objects and lists (masked arguments, client lists), as canonical JSON
NAME_FIELDS = frozenset(
    {
        "agent",
        "owner",
        "cost_center",
        "on_behalf_of",
        "session",
        "grant",
        "server",
        "tool",
        "call_id",
        "model",
        "client",
        "mcp_session",
        "protocol_version",
        "remote_addr",
        "event",
        "gateway",
        "actor",
        "kid",
        "jti",
        "credential",
        "dpop_jkt",
    }
)


def draft(ts: float, event: str, instance: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A record before it is chained: when, what, which chain, then the capped fields that are not None."""
    record: dict[str, Any] = {"ts": ts, "event": event, "gateway": instance}
    for key, value in capped(fields).items():  # a client's string of any size costs a bounded record
        if value is not None:
            record[key] = value
    return record


_STRUCTURED = (dict, list, tuple)  # a tuple, built once (an `X | Y` is built at each evaluation)


def capped(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with every value over its cap replaced by its prefix, its length and its hash (see above)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        kind = type(value)
        if (kind is str and len(value) <= CAP_NAME) or kind is int or value is None:  # most fields: under every cap
            out[key] = value
            continue
        if isinstance(value, str):
            text, cap = value, (CAP_NAME if key in NAME_FIELDS else CAP_TEXT)
        elif isinstance(value, _STRUCTURED) and value:
            text, cap = canonical_json(value), CAP_STRUCTURED
        else:
            out[key] = value
            continue
        if len(text) <= cap:
            out[key] = value
            continue
        out[key] = text[:cap]
        out[f"{key}_length"] = len(text)
        out[f"{key}_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return out


# ---------------------------------------------------------------- masked arguments (log_arguments: true)

MASK = "[masked]"

# Names whose values are masked whole: any word of the key, split at _ - . and camelCase.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "apikey",
        "key",
        "keys",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "cookies",
        "signature",
        "private",
        "bearer",
        "otp",
        "pin",
        "jwt",
    }
)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# Values that look like secrets wherever they appear, inside any string.
_SECRET_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S), MASK),
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MASK),  # JWT / JWS
    # A scheme word followed by another ("basic Bearer x...") is prose: the credential follows the last one.
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)(?!(?:bearer|basic|token)\b)[A-Za-z0-9._~+/=-]{6,}"), rf"\1\2{MASK}"),
    (re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)"), MASK),  # user:password@ in URLs
    (
        re.compile(
            r"(?i)(pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|auth)"
            r"([\"']?\s*[=:]\s*[\"']?)[^\s\"'&;,]+"
        ),
        rf"\1\2{MASK}",
    ),  # password=..., "token": "..."
    (re.compile(r"(?<![A-Za-z0-9])(?:sk|pk|rk)[-_][A-Za-z0-9_-]{16,}"), MASK),  # OpenAI, Stripe, Anthropic
    (re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"), MASK),  # GitHub
    (re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack
    (re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}"), MASK),  # AWS access key id
    (re.compile(r"(?<![A-Za-z0-9])AIza[A-Za-z0-9_-]{30,}"), MASK),  # Google API key
    # Anything long and random-looking: 24+ characters mixing upper case, lower case and digits.
    (
        re.compile(
            r"(?<![A-Za-z0-9+/_=-])(?=[A-Za-z0-9+/_=-]*[0-9])(?=[A-Za-z0-9+/_=-]*[a-z])"
            r"(?=[A-Za-z0-9+/_=-]*[A-Z])[A-Za-z0-9+/_=-]{24,}"
        ),
        MASK,
    ),
)


def secret_name(key: str) -> bool:
    return any(word.lower() in _SECRET_WORDS for word in _WORDS.findall(key)) or key.lower() in _SECRET_WORDS


def masked(value: Any) -> Any:
    """A copy of JSON-able arguments with secret-looking values masked: by key name, and by value shape."""
    if isinstance(value, dict):
        return {k: MASK if secret_name(str(k)) else masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    if isinstance(value, str):
        for pattern, replacement in _SECRET_SHAPES:
            value = pattern.sub(replacement, value)
        return value
    return value
