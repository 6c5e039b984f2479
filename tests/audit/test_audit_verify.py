"""`mcp-gateway audit verify` on a stream the real sink wrote: it names the seq of the first broken link."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config.files import load_gateway_config
from gateway.identity.keys import KeyRing
from tests.audit.conftest import Stream, rewrite, verify_cli


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_an_untouched_stream_verifies_and_counts_every_record(stream: Stream, capsys: pytest.CaptureFixture[str]):
    assert len(stream.files) >= 3, "the stream should span rotated files"
    code, out = verify_cli(stream, capsys)
    total = len(stream.records()) + len(stream.records(stream.cli))
    assert code == 0, out
    assert out.splitlines()[-1] == f"intact: {total} records"
    assert out.count("reaches the store's checkpoint") == 2  # the gateway's chain and the operator chain


def _cut_tail(stream: Stream, records: int) -> dict[str, Any]:
    """Remove the stream's last records at line boundaries, whichever files they are in; return the last left."""
    for _ in range(records):
        path = stream.files[-1]
        lines = _lines(path)
        rewrite(path, lines[:-1]) if len(lines) > 1 else path.unlink()
    return stream.records()[-1]


def _broken_after(
    stream: Stream, capsys: pytest.CaptureFixture[str], path: Path, change: Callable[[list[str]], object]
) -> str:
    """Change the lines of one file of the stream; verify must fail. Returns what it printed."""
    lines = _lines(path)
    change(lines)
    rewrite(path, lines)
    code, out = verify_cli(stream, capsys)
    assert code == 1, out
    return out


def test_an_edited_field_is_caught_at_its_seq(stream: Stream, capsys: pytest.CaptureFixture[str]):
    record = json.loads(_lines(stream.files[1])[3])

    def edit(lines: list[str]) -> None:
        lines[3] = json.dumps({**record, "agent": "mallory-bot"})

    assert f"BROKEN at seq {record['seq']}: altered" in _broken_after(stream, capsys, stream.files[1], edit)


def test_a_deleted_line_is_caught_at_its_seq(stream: Stream, capsys: pytest.CaptureFixture[str]):
    deleted = json.loads(_lines(stream.files[1])[4])
    out = _broken_after(stream, capsys, stream.files[1], lambda lines: lines.pop(4))
    assert f"BROKEN at seq {deleted['seq']}: missing" in out


def test_two_swapped_lines_are_caught_at_the_first_seq_out_of_place(stream: Stream, capsys: pytest.CaptureFixture[str]):
    first = json.loads(_lines(stream.files[-1])[2])

    def swap(lines: list[str]) -> None:
        lines[2], lines[3] = lines[3], lines[2]

    assert f"BROKEN at seq {first['seq']}:" in _broken_after(stream, capsys, stream.files[-1], swap)


def test_an_inserted_copy_of_a_record_is_caught(stream: Stream, capsys: pytest.CaptureFixture[str]):
    copied = json.loads(_lines(stream.files[0])[5])
    out = _broken_after(stream, capsys, stream.files[0], lambda lines: lines.insert(6, lines[5]))
    assert f"BROKEN at seq {copied['seq'] + 1}: found seq {copied['seq']} again" in out


def test_a_tail_cut_mid_record_is_caught_even_without_the_store(stream: Stream, capsys: pytest.CaptureFixture[str]):
    path = stream.path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])
    last_complete = json.loads(path.read_bytes().rsplit(b"\n", 2)[-2])
    code, out = verify_cli(stream, capsys, *stream.files)
    assert code == 1
    assert f"BROKEN at seq {last_complete['seq'] + 1}: incomplete: the file was cut off" in out


def test_a_tail_cut_at_a_line_boundary_is_caught_against_the_stores_checkpoint(
    stream: Stream, capsys: pytest.CaptureFixture[str]
):
    last = _cut_tail(stream, 4)
    code, out = verify_cli(stream, capsys)
    assert code == 1
    assert f"BROKEN at seq {last['seq'] + 1}: missing: the stream ends at seq {last['seq']}" in out
    assert "the tail was cut off" in out


def test_a_removed_rotated_file_is_caught_as_a_gap_between_files(stream: Stream, capsys: pytest.CaptureFixture[str]):
    before, removed, after = stream.files[0], stream.files[1], stream.files[2]
    first_missing = json.loads(_lines(removed)[0])["seq"]
    removed.unlink()
    for args in ((), stream.files):  # the configured stream, and the files named on the command line
        code, out = verify_cli(stream, capsys, *args)
        assert code == 1
        assert f"BROKEN at seq {first_missing}: missing" in out
        assert f"between {before.name} and {after.name}" in out


def test_files_named_in_any_order_verify_in_chain_order(stream: Stream, capsys: pytest.CaptureFixture[str]):
    files = [*stream.files, stream.cli]
    random.Random(7).shuffle(files)
    code, out = verify_cli(stream, capsys, *files)
    assert code == 0, out
    assert f"intact: {len(stream.records()) + len(stream.records(stream.cli))} records" in out


def test_checkpoints_verify_with_public_keys_alone(stream: Stream, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    """Away from the gateway, without its keys, an untouched stream is not called broken: its hash chain is
    intact and its checkpoints unverified (exit 3); with the public keys, from a file or the gateway's
    jwks_uri, it verifies (exit 0)."""
    config = load_gateway_config(stream.config)
    keys = KeyRing(config.signing_key)
    keys.load(create=False)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks(0)))
    kid = keys.jwks(0)["keys"][0]["kid"]
    elsewhere = ["--config", str(tmp_path / "absent.yaml"), *map(str, stream.files)]

    assert main(["audit", "verify", *elsewhere]) == 3
    out = capsys.readouterr().out
    assert "BROKEN" not in out
    assert f"not verified: key {kid!r} unknown (pass --jwks FILE or URL)" in out
    assert main(["audit", "verify", *elsewhere, "--jwks", str(jwks)]) == 0
    assert "intact:" in capsys.readouterr().out
    with _serving(jwks.read_bytes()) as url:
        assert main(["audit", "verify", *elsewhere, "--jwks", url]) == 0
    assert "intact:" in capsys.readouterr().out


def test_tampering_is_told_apart_from_missing_keys(stream: Stream, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    path = stream.files[0]
    lines = _lines(path)
    record = json.loads(lines[1])
    record["tool"] = "something-else"
    lines[1] = json.dumps(record)
    rewrite(path, lines)
    assert main(["audit", "verify", "--config", str(tmp_path / "absent.yaml"), *map(str, stream.files)]) == 1
    assert "BROKEN at seq 2" in capsys.readouterr().out


@contextlib.contextmanager
def _serving(body: bytes) -> Iterator[str]:
    """A real HTTP server on loopback answering every GET with `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_checkpoint_signed_by_another_key_is_caught(stream: Stream, capsys: pytest.CaptureFixture[str]):
    path = stream.files[0]
    lines = _lines(path)
    index, record = next(
        (i, json.loads(line)) for i, line in enumerate(lines) if json.loads(line)["event"] == "audit.checkpoint"
    )
    header, payload, signature = record["signature"].split(".")
    record["signature"] = ".".join([header, payload, signature[::-1]])
    lines[index] = json.dumps(record)
    rewrite(path, lines)
    code, out = verify_cli(stream, capsys, *stream.files)
    assert code == 1
    assert f"BROKEN at seq {record['seq']}:" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify", "--bogus"],
        ["audit", "tail", "--since", "the day before yesterday"],
        ["audit", "tail", "--lines", "-3"],
        ["audit", "tail", "--unknown-flag"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err


def test_a_missing_file_or_config_is_one_line_and_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "verify", "--config", str(tmp_path / "absent.yaml"), str(tmp_path / "nope.jsonl")]) == 1
    assert capsys.readouterr().err.strip() == f"mcp-gateway: error: {tmp_path / 'nope.jsonl'}: no such audit file"
    assert main(["audit", "verify", "--config", str(tmp_path / "absent.yaml")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_store_checkpoint_moved_to_match_a_cut_tail_is_caught(stream: Stream, capsys: pytest.CaptureFixture[str]):
    """Cutting the tail and rewriting the store's head to fit still fails: the head is signed."""
    last = _cut_tail(stream, 3)
    config = load_gateway_config(stream.config)
    with sqlite3.connect(config.sqlite_path) as db:
        db.execute(
            "UPDATE checkpoints SET seq = ?, head = ? WHERE instance = ?", (last["seq"], last["hash"], config.instance)
        )
    code, out = verify_cli(stream, capsys)
    assert code == 1
    assert f"BROKEN at seq {last['seq']}: the store's checkpoint is not what its signature vouches for" in out
