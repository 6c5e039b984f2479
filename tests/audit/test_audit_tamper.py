"""Property: any single tampering with a real stream is caught, at the seq where it happened."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.chain import record_hash, seal
from gateway.audit.checkpoints import PublicKeys
from gateway.audit.verify import verify
from gateway.canonical import chained
from gateway.config.files import load_gateway_config
from gateway.identity.keys import KeyRing
from gateway.store import open_store
from tests.audit.conftest import Stream, make_stream


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stream, list[list[str]], PublicKeys, dict[str, Any]]:
    stream = make_stream(tmp_path_factory.mktemp("stream"), calls=20)
    config = load_gateway_config(stream.config)
    ring = KeyRing(config.signing_key)
    ring.load(create=False)

    async def checkpoint() -> dict[str, Any]:
        store = open_store(config)
        await store.open()
        try:
            found = await store.get_checkpoint(config.instance)
        finally:
            await store.close()
        assert found is not None
        return {config.instance: found}

    files = [path.read_text().splitlines() for path in stream.files]
    return stream, files, lambda kid: key.public if (key := ring.verify_key(kid)) else None, anyio.run(checkpoint)


def _broken(files: list[list[str]], keys: PublicKeys, stored: dict[str, Any]) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, lines in enumerate(files):
            path = Path(tmp) / f"audit.{i:012d}.jsonl"
            path.write_text("".join(line + "\n" for line in lines))
            paths.append(path)
        [instance] = stored
        return next(chain.broken for chain in verify(paths, keys, stored) if chain.instance == instance)


def _locate(files: list[list[str]], index: int) -> tuple[int, int]:
    for f, lines in enumerate(files):
        if index < len(lines):
            return f, index
        index -= len(lines)
    raise IndexError(index)


def _seq(line: str) -> int:
    return int(json.loads(line)["seq"])


def test_the_untouched_stream_is_intact(written):  # type: ignore[no-untyped-def]
    _, files, keys, stored = written
    assert _broken(files, keys, stored) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_tampering_is_caught_at_its_seq(written, data: st.DataObject):  # type: ignore[no-untyped-def]
    _, original, keys, stored = written
    files = [list(lines) for lines in original]
    total = sum(len(lines) for lines in files)
    kind = data.draw(st.sampled_from(["edit", "delete", "swap", "duplicate", "rewrite"]))
    index = data.draw(st.integers(0, total - 3))  # the last records are covered by the store's checkpoint test
    f, i = _locate(files, index)
    seq = _seq(files[f][i])
    if kind == "edit":
        record = json.loads(files[f][i])
        field = data.draw(st.sampled_from(sorted(record)))
        record[field] = data.draw(st.one_of(st.integers(), st.text(max_size=8)).filter(lambda v: v != record[field]))
        files[f][i] = json.dumps(record)
        expected = seq
    elif kind == "delete":
        del files[f][i]
        expected = seq
    elif kind == "swap":
        g, j = _locate(files, index + 1)
        files[f][i], files[g][j] = files[g][j], files[f][i]
        expected = seq
    elif kind == "duplicate":
        files[f].insert(i + 1, files[f][i])
        expected = seq + 1
    else:  # a careful forger edits one record and recomputes every hash after it; only signatures stop them
        record = json.loads(files[f][i])
        if record["event"] == "audit.checkpoint":
            return
        record["agent"] = "mallory-bot"
        expected = min(_rechain(files, f, i, record), *(c["seq"] for c in stored.values()))
    broken = _broken(files, keys, stored)
    assert broken is not None and broken.startswith(f"seq {expected}:"), (kind, broken)


def _rechain(files: list[list[str]], f: int, i: int, edited: dict[str, Any]) -> int:
    """Rewrite the chain from the edited record on; return the seq of the first checkpoint after it."""
    head = edited["prev_hash"]
    first_checkpoint = None
    for g in range(f, len(files)):
        for j in range(i if g == f else 0, len(files[g])):
            record = edited if (g, j) == (f, i) else json.loads(files[g][j])
            if record["event"] == "audit.checkpoint" and first_checkpoint is None:
                first_checkpoint = record["seq"]
            record["prev_hash"] = head
            head, line = seal(record)
            files[g][j] = line.decode().rstrip("\n")
    assert first_checkpoint is not None  # the stream always ends with one
    return first_checkpoint


@given(
    st.dictionaries(
        st.text(max_size=6),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=10),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=8,
    )
)
def test_a_sealed_line_is_the_canonical_record_followed_by_its_hash(record: dict[str, Any]):
    record = {"event": "e", **record}
    record.pop("hash", None)
    digest, line = seal(dict(record))
    assert digest == record_hash(record)
    assert json.loads(line) == {**record, "hash": digest}
    assert line == chained(record)[:-1] + f',"hash":"{digest}"}}\n'.encode()
