"""Walk audit chains and name the first broken link of each.

Records are grouped by `gateway` (one chain per instance) and read in file
order. A chain is intact when it starts at seq 1 from the genesis hash, every
record's hash matches its contents, each seq follows the one before and links
to its hash, and each checkpoint's signature vouches for the record before it.
Given the store's checkpoint for a chain, the files must also still reach the
head it vouches for: a cut-off tail does not.

A checkpoint signed by a key the verifier does not have (run away from the
gateway, without --jwks) proves nothing either way: the chain's hashes still
verify, and the checkpoint is counted as unverified, never as tampering.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.chain import GENESIS, record_hash
from gateway.audit.checkpoints import EVENT as CHECKPOINT
from gateway.audit.checkpoints import BadSignature, PublicKeys, UnknownKey, signed_head
from gateway.audit.files import cli_instance

if TYPE_CHECKING:
    from gateway.store import Store


@dataclass
class Chain:
    instance: str
    seq: int = 0  # the last record that verified (so also how many did)
    head: str = GENESIS
    checkpoints: int = 0
    files: list[Path] = field(default_factory=list)
    expect: tuple[int, str] | None = None  # the store's checkpoint: (seq, head)
    broken: str | None = None  # the first broken link
    unverified: dict[str, int] = field(default_factory=dict)  # kid -> checkpoints signed by a key not at hand

    def fail(self, seq: int, problem: str) -> None:
        if self.broken is None:
            self.broken = f"seq {seq}: {problem}"

    def summary(self) -> str:
        if self.broken is not None:
            return f"{self.instance}: BROKEN at {self.broken}"
        span = f"seq 1..{self.seq}" if self.seq else "no records"
        store = f", reaches the store's checkpoint at seq {self.expect[0]}" if self.expect else ""
        summary = (
            f"{self.instance}: intact, {_count(self.seq, 'record')} ({span}) in "
            f"{_count(len(self.files), 'file')}, {_count(self.checkpoints, 'checkpoint')}{store}"
        )
        if self.unverified:
            keys = ", ".join(f"key {kid!r} unknown" for kid in sorted(self.unverified))
            summary = (
                f"{self.instance}: hash chain intact, {_count(self.seq, 'record')} ({span}) in "
                f"{_count(len(self.files), 'file')}; {_count(sum(self.unverified.values()), 'checkpoint')} "
                f"not verified: {keys} (pass --jwks FILE or URL)"
            )
        return summary


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def verify(paths: Sequence[Path], keys: PublicKeys, stored: dict[str, dict[str, Any]] | None = None) -> list[Chain]:
    """Verify the chains in `paths` (read in this order), against the store's checkpoints if given."""
    chains: dict[str, Chain] = {}
    for instance, checkpoint in (stored or {}).items():
        seq, head = int(checkpoint["seq"]), str(checkpoint["head"])
        chain = chains[instance] = Chain(instance, expect=(seq, head))
        try:
            claims = signed_head(checkpoint["signature"], keys)
        except UnknownKey as exc:
            chain.unverified[str(exc.kid)] = chain.unverified.get(str(exc.kid), 0) + 1
            continue
        except BadSignature as exc:
            chain.fail(seq, f"the store's checkpoint is {exc}")
            continue
        if claims != {"gateway": instance, "seq": seq, "head": head}:
            chain.fail(seq, "the store's checkpoint is not what its signature vouches for")
    for path in paths:
        _walk(path, chains, keys)
    for chain in chains.values():
        if chain.expect is not None and chain.seq < chain.expect[0]:
            chain.fail(
                chain.seq + 1,
                f"missing: the stream ends at seq {chain.seq} but the store's checkpoint "
                f"vouches for seq {chain.expect[0]} (the tail was cut off)",
            )
    return sorted(chains.values(), key=lambda c: c.instance)


def _walk(path: Path, chains: dict[str, Chain], keys: PublicKeys) -> None:
    current: Chain | None = None
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            where = f"({path.name} line {number})"
            record = _parse(line)
            if record is None:
                chain = current or chains.setdefault("(unknown)", Chain("(unknown)"))
                problem = "incomplete: the file was cut off" if not line.endswith(b"\n") else "not a JSON record"
                chain.fail(chain.seq + 1, f"{problem} {where}")
                continue
            current = chains.setdefault(record["gateway"], Chain(record["gateway"]))
            if current.broken is None:
                _check(current, record, path, where, keys)


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("gateway"), str) else None


def _check(chain: Chain, record: dict[str, Any], path: Path, where: str, keys: PublicKeys) -> None:
    seq, prev, digest = record.get("seq"), record.get("prev_hash"), record.get("hash")
    expected = chain.seq + 1
    if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(digest, str):
        chain.fail(expected, f"a record without seq, prev_hash and hash {where}")
    elif record_hash(record) != digest:
        chain.fail(expected, f"altered: its hash does not match its contents {where}")
    elif seq > expected:
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        if chain.files and chain.files[-1] != path:
            chain.fail(
                expected,
                f"missing: {missing} should come between {chain.files[-1].name} and {path.name} "
                "(a rotated file was removed?)",
            )
        else:
            chain.fail(expected, f"missing: the next record is seq {seq}, so {missing} was deleted or moved {where}")
    elif seq < expected:
        chain.fail(expected, f"found seq {seq} again after seq {chain.seq}: records were inserted or reordered {where}")
    elif prev != chain.head:
        chain.fail(seq, f"does not link to seq {chain.seq}: a record was replaced or inserted {where}")
    elif record.get("event") == CHECKPOINT and not _vouches(chain, record, where, keys):
        return
    elif chain.expect is not None and seq == chain.expect[0] and digest != chain.expect[1]:
        chain.fail(seq, f"not the record the store's checkpoint vouches for {where}")
    else:
        chain.seq, chain.head = seq, digest
        if not chain.files or chain.files[-1] != path:
            chain.files.append(path)


def _vouches(chain: Chain, record: dict[str, Any], where: str, keys: PublicKeys) -> bool:
    """A checkpoint record must carry a valid signature over the head before it."""
    try:
        claims = signed_head(str(record.get("signature")), keys)
    except UnknownKey as exc:  # the link itself verified (its hash); only the signature is unproven
        chain.unverified[str(exc.kid)] = chain.unverified.get(str(exc.kid), 0) + 1
        if record.get("head_seq") != chain.seq or record.get("head") != chain.head:
            chain.fail(record["seq"], f"checkpoint does not vouch for seq {chain.seq} before it {where}")
            return False
        return True
    except BadSignature as exc:
        chain.fail(record["seq"], f"checkpoint {exc} {where}")
        return False
    vouched = {"gateway": chain.instance, "seq": chain.seq, "head": chain.head}
    if claims != vouched or record.get("head_seq") != chain.seq or record.get("head") != chain.head:
        chain.fail(record["seq"], f"checkpoint does not vouch for seq {chain.seq} before it {where}")
        return False
    chain.checkpoints += 1
    return True


async def stored_checkpoints(store: Store, instance: str) -> dict[str, dict[str, Any]]:
    """The store's last checkpoint of the gateway's chain and of its operator chain (an opened store)."""
    found = {i: await store.get_checkpoint(i) for i in (instance, cli_instance(instance))}
    return {name: checkpoint for name, checkpoint in found.items() if checkpoint is not None}
