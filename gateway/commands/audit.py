"""`mcp-gateway audit verify|tail|export`: check the hash chains, read the stream, convert it for SIEMs."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt import PyJWK, PyJWTError

from gateway.audit.checkpoints import PublicKeys
from gateway.audit.files import audit_files, cli_path
from gateway.audit.ocsf import to_ocsf
from gateway.audit.tail import Filter, Follower, history, read_file, readable
from gateway.audit.verify import stored_checkpoints, verify
from gateway.canonical import canonical_json
from gateway.commands._context import run
from gateway.config.durations import moment_argument
from gateway.config.files import GatewayConfig, load_gateway_config
from gateway.errors import ConfigError, GatewayError
from gateway.identity.keys import ALGORITHM
from gateway.identity.stored_keys import key_ring
from gateway.store import Store, open_store
from gateway.terminal import json_text

POLL_SECONDS = 0.2  # how often --follow looks for new records


def _lines(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return int(value)


UNVERIFIED = 3  # `audit verify`: every hash links, but some checkpoint signatures could not be checked
JWKS_TIMEOUT = 10.0
JWKS_MAX_BYTES = 1024 * 1024


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("audit", help="the audit stream").add_subparsers(dest="action", required=True)

    check = group.add_parser("verify", parents=[common], help="check the hash chains; name the first broken link")
    check.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="audit files (default: the configured stream, its rotated files and the CLI chain, "
        "compared with the store's checkpoints)",
    )
    check.add_argument(
        "--jwks",
        action="append",
        default=[],
        metavar="FILE|URL",
        help="public keys (a JWKS file, or the gateway's jwks_uri) for checkpoints signed by keys "
        "not at hand; exit 0 intact, 1 broken, 3 hash chain intact but checkpoints unverified",
    )
    check.set_defaults(run=_verify)

    tail = group.add_parser("tail", parents=[common], help="print the newest records; --follow for more")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing records as they are written")
    tail.add_argument("--agent", metavar="ID")
    tail.add_argument("--session", metavar="SID")
    tail.add_argument("--event", action="append", metavar="GLOB", help="e.g. tool.call or 'tool.*' (repeatable)")
    tail.add_argument("--since", type=moment_argument, metavar="WHEN", help="a duration ago (15m) or an ISO 8601 time")
    tail.add_argument(
        "-n",
        "--lines",
        type=_lines,
        metavar="N",
        help="how many past records to print (default 10, or all with --since)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON record a line, for pipes")
    tail.set_defaults(run=_tail)

    export = group.add_parser("export", parents=[common], help="the stream as OCSF 1.8 JSON lines, for a SIEM")
    export.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="audit files (default: the configured stream, its rotated files and the CLI chain)",
    )
    export.add_argument("--format", choices=["ocsf"], default="ocsf", help="ocsf: one OCSF 1.8 event a line")
    export.add_argument(
        "--since", type=moment_argument, metavar="WHEN", help="a duration ago (15m) or an ISO 8601 time"
    )
    window = export.add_mutually_exclusive_group()
    window.add_argument("--until", type=moment_argument, metavar="WHEN", help="records up to this time")
    window.add_argument(
        "-f", "--follow", action="store_true", help="keep exporting records as they are written, across rotations"
    )
    export.set_defaults(run=_export)


def _verify(args: argparse.Namespace) -> int:
    async def body() -> int:
        config_path = Path(args.config)
        config = load_gateway_config(config_path) if not args.paths or config_path.exists() else None
        store = open_store(config) if config is not None else None
        keys = _public_keys(config, store, args.jwks)
        if args.paths:
            for path in args.paths:
                if not path.is_file():
                    raise GatewayError(f"{path}: no such audit file")
            chains = verify(sorted(args.paths, key=_first_seq), keys)
        else:
            assert config is not None and store is not None
            chains = verify(audit_files(config.audit.path), keys, await _stored_checkpoints(config, store))
        for chain in chains:
            print(chain.summary())
        broken = sum(1 for chain in chains if chain.broken)
        if broken:
            print(f"broken: {broken} of {len(chains)} chains")
            return 1
        unverified = sum(sum(chain.unverified.values()) for chain in chains)
        if unverified:
            print(
                f"hash chains intact: {sum(chain.seq for chain in chains)} records; "
                f"{unverified} checkpoint signatures not verified (no key at hand)"
            )
            return UNVERIFIED
        print(f"intact: {sum(chain.seq for chain in chains)} records")
        return 0

    return run(body)


def _first_seq(path: Path) -> int:
    """Files given on the command line are read in chain order, whatever order the shell gave them in."""
    with path.open("rb") as handle:
        try:
            return int(json.loads(handle.readline())["seq"])
        except (ValueError, KeyError, TypeError):
            return 0


async def _stored_checkpoints(config: GatewayConfig, store: Store) -> dict[str, dict[str, Any]]:
    await store.open()
    try:
        return await stored_checkpoints(store, config.instance)
    finally:
        await store.close()


def _public_keys(config: GatewayConfig | None, store: Store | None, jwks_sources: list[str]) -> PublicKeys:
    """Checkpoint keys: the gateway's keys (on disk, or in the store with PostgreSQL), then any JWKS given
    (a file, or a URL such as the gateway's own jwks_uri)."""
    ring = key_ring(config, store) if config is not None and store is not None else None
    if ring is not None:
        try:
            ring.load(create=False)
        except ConfigError:
            ring = None
    given: dict[str, Ed25519PublicKey] = {}
    for source in jwks_sources:
        try:
            for jwk in json.loads(_read_jwks(source))["keys"]:
                if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                    given[jwk["kid"]] = PyJWK(jwk, ALGORITHM).key
        except (OSError, ValueError, KeyError, TypeError, PyJWTError) as exc:
            raise GatewayError(f"{source}: not a usable JWKS: {exc}") from None

    def lookup(kid: str) -> Ed25519PublicKey | None:
        if kid in given:
            return given[kid]
        key = ring.verify_key(kid) if ring is not None else None
        return key.public if key is not None else None

    return lookup


def _read_jwks(source: str) -> bytes:
    """A JWKS from a file, or fetched from an http(s) URL (bounded in time and size, no redirects followed)."""
    if not source.startswith(("https://", "http://")):
        return Path(source).read_bytes()

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(
        urllib.request.Request(source, headers={"accept": "application/json"}), timeout=JWKS_TIMEOUT
    ) as response:
        body: bytes = response.read(JWKS_MAX_BYTES + 1)
    if len(body) > JWKS_MAX_BYTES:
        raise ValueError(f"larger than {JWKS_MAX_BYTES} bytes")
    return body


def _json_line(record: dict[str, Any]) -> str:
    """The record as compact sorted JSON, ASCII only: equal values to the file's line, never a raw control."""
    return json_text(record, sort_keys=True, separators=(",", ":"), default=str)


def _tail(args: argparse.Namespace) -> int:
    config = load_gateway_config(Path(args.config))
    wanted = Filter(args.agent, args.session, tuple(args.event or ()), args.since)
    limit = args.lines if args.lines is not None else (None if args.since is not None else 10)
    show = _json_line if args.json else readable
    followers = [Follower(config.audit.path), Follower(cli_path(config.audit.path))]

    def write(records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            if wanted.matches(record):
                print(show(record))
        sys.stdout.flush()

    return _following(followers, lambda: write(history(followers, wanted, limit)), write, args.follow)


def _export(args: argparse.Namespace) -> int:
    wanted = Filter(since=args.since)
    if args.paths:
        for path in args.paths:
            if not path.is_file():
                raise GatewayError(f"{path}: no such audit file")
        paths = sorted(args.paths, key=_first_seq)
        followers = [Follower(path) for path in paths] if args.follow else []
    else:
        config = load_gateway_config(Path(args.config))
        paths = []
        followers = [Follower(config.audit.path), Follower(cli_path(config.audit.path))]

    def write(records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            if wanted.matches(record) and (args.until is None or float(record.get("ts", 0)) <= args.until):
                sys.stdout.write(canonical_json(to_ocsf(record)) + "\n")
        sys.stdout.flush()

    def first() -> None:
        if followers:
            write(history(followers, Filter(), None) if not args.paths else [r for f in followers for r in f.poll()])
        else:
            write([record for path in paths for record in read_file(path)])

    return _following(followers, first, write, args.follow)


def _following(
    followers: list[Follower], first: Callable[[], None], more: Callable[[list[dict[str, Any]]], None], follow: bool
) -> int:
    """Print what is there (`first`), then, with `follow`, what the followers find as it is written."""
    try:
        first()
        while follow:
            time.sleep(POLL_SECONDS)
            more([record for follower in followers for record in follower.poll()])
    except BrokenPipeError:  # the reader went away (| head)
        sys.stderr.close()
    finally:
        for follower in followers:
            follower.close()
    return 0
