"""The evidence block of a report: for every action, what ties it to an identity, and what an untied one lacked.

An action is a forwarded tool call, an allowed read, prompt or completion, or a model
usage report (`report.is_action`). Each share counts the actions that have something and
names, for each one that does not, the reason it was not counted:

- unique_identity: it names an agent whose credential was not flagged as shared around it
  (else no_agent, shared_credential);
- grant: it carries the grant version that admitted it (else no_grant);
- closed_cleanly: its session was closed, not expired, revoked or still open (else that outcome);
- without_stored_secret: its token was got with a credential no one stores, the platform's
  workload JWT (else secret, private_key_jwt, id_jag, operator, or unknown for records
  written before the gateway recorded credential kinds);
- sender_constrained: its token is bound to a key the agent holds (DPoP, `dpop_jkt`; else bearer).

`interactive` (a person's sign-in, reserved) counts as without a stored secret too; an
ID-JAG session does not, since the agent authenticates with its own secret or key to
present one, and neither does an operator-minted token (`sessions open`), which is a
bearer credential someone pastes and keeps.

A `credential.shared_suspected` record concerns only the actions of its agent within
its `window_s` on either side of it: the detector writes it at T when the agent was seen
from more distinct clients than allowed in (T - window, T], and holds that client flagged
until T + window. Outside that span it says nothing about who held the credential, so an
agent's earlier and later actions stay tied to it. (Earlier versions marked every action
of a flagged agent in the whole report, one flag turning a day of use into "not unique".)
A flag without a usable window (not a positive finite number) concerns all of its agent's
actions, as before.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.events import Event
from gateway.identity.tokens import CREDENTIALS

SHARED_FLAG = Event.CREDENTIAL_SHARED_SUSPECTED
SECRETLESS = frozenset({"workload", "interactive"})
UNKNOWN = "unknown"
SHARES = ("unique_identity", "grant", "closed_cleanly", "without_stored_secret", "sender_constrained")
LABELS = {
    "unique_identity": "tied to a unique agent identity",
    "grant": "tied to a grant",
    "closed_cleanly": "in a session that closed cleanly",
    "without_stored_secret": "by agents without stored secrets",
    "sender_constrained": "with sender-constrained tokens",
}
# What an action lacked, said of one action and of several: "1 action names no agent", "3 actions name ..."
_LACKED = {
    "no_agent": ("names no agent", "name no agent"),
    "no_grant": ("carries no grant version", "carry no grant version"),
    "expired": ("was in a session that expired", "were in sessions that expired"),
    "revoked": ("was in a session that was revoked", "were in sessions that were revoked"),
    "open": ("is in a session still open", "are in sessions still open"),
    "secret": ("used a token got with a stored client secret", "used tokens got with a stored client secret"),
    "private_key_jwt": (
        "used a token got with a registered private key (private_key_jwt)",
        "used tokens got with a registered private key (private_key_jwt)",
    ),
    "id_jag": (
        "used a token got with an ID-JAG, its agent authenticating with its own secret or key",
        "used tokens got with an ID-JAG, their agent authenticating with its own secret or key",
    ),
    "operator": ("used a token an operator minted (sessions open)", "used tokens an operator minted (sessions open)"),
    UNKNOWN: (
        "does not say how its token was got (written before the gateway recorded it)",
        "do not say how their token was got (written before the gateway recorded it)",
    ),
    "bearer": ("used a bearer token bound to no key (no DPoP)", "used bearer tokens bound to no key (no DPoP)"),
}
_AGENTS_NAMED = 5  # agents listed by name in one explanation; the rest are counted


@dataclass
class _Span:
    """Where shared-credential flags of one agent overlap: (start, end), how many flags, the most clients seen,
    the widest window."""

    start: float
    end: float
    flags: int
    clients: int | None
    reach: float


@dataclass
class _Tally:
    counted: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    by_agent: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, record: dict[str, Any], reason: str | None) -> None:
        if reason is None:
            self.counted += 1
            return
        self.missing[reason] += 1
        self.by_agent[reason][str(record.get("agent") or "(none)")] += 1


def shared_spans(records: list[dict[str, Any]]) -> dict[str, list[_Span]]:
    """Per agent, the disjoint time spans its shared-credential flags concern, in time order."""
    spans: dict[str, list[_Span]] = defaultdict(list)
    for record in records:
        agent, ts = record.get("agent"), record.get("ts")
        if record.get("event") != SHARED_FLAG or not isinstance(agent, str) or not isinstance(ts, int | float):
            continue
        window = record.get("window_s")
        reach = math.inf  # no usable window: the flag concerns all of the agent's actions
        if isinstance(window, int | float) and not isinstance(window, bool) and math.isfinite(window) and window > 0:
            reach = float(window)
        clients = record.get("fingerprints")
        clients = clients if isinstance(clients, int) and not isinstance(clients, bool) else None
        spans[agent].append(_Span(ts - reach, ts + reach, 1, clients, reach))
    merged: dict[str, list[_Span]] = {}
    for agent, found in spans.items():
        found.sort(key=lambda s: s.start)
        out = [found[0]]
        for span in found[1:]:
            last = out[-1]
            if span.start < last.end:  # overlapping: one span with both flags
                last.end = max(last.end, span.end)
                last.flags += 1
                last.reach = max(last.reach, span.reach)
                last.clients = max((c for c in (last.clients, span.clients) if c is not None), default=None)
            else:
                out.append(span)
        merged[agent] = out
    return merged


def _flagged(spans: list[_Span], starts: list[float], ts: float) -> int | None:
    """The index of the span of `spans` (starts: their starts) strictly around `ts`, if any."""
    i = bisect.bisect_left(starts, ts) - 1  # the last span starting before ts
    return i if i >= 0 and ts < spans[i].end else None


def evidence(
    actions: list[dict[str, Any]], flags_from: list[dict[str, Any]], outcome: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """The shares over `actions`; flags are read from `flags_from` (a flag just outside the period still
    concerns the actions within its window); `outcome(action)` is its session's (closed, expired, revoked, open).
    """
    spans = shared_spans(flags_from)
    starts = {agent: [s.start for s in found] for agent, found in spans.items()}
    tallies = {name: _Tally() for name in SHARES}
    hit: dict[str, Counter[int]] = defaultdict(Counter)  # agent -> index of its span -> actions within it
    by_credential: Counter[str] = Counter()
    for record in actions:
        agent = record.get("agent")
        span = (
            _flagged(spans[agent], starts[agent], record["ts"]) if isinstance(agent, str) and agent in spans else None
        )
        if span is not None:
            hit[str(agent)][span] += 1
        tallies["unique_identity"].add(
            record, "no_agent" if not agent else None if span is None else "shared_credential"
        )
        tallies["grant"].add(record, None if record.get("grant") else "no_grant")
        ended = outcome(record)
        tallies["closed_cleanly"].add(record, None if ended == "closed" else ended)
        credential = record.get("credential")
        kind = credential if isinstance(credential, str) and credential in CREDENTIALS else UNKNOWN
        by_credential[kind] += 1
        tallies["without_stored_secret"].add(record, None if kind in SECRETLESS else kind)
        tallies["sender_constrained"].add(record, None if record.get("dpop_jkt") else "bearer")
    total = len(actions)
    explained = {name: _sentences(tally) for name, tally in tallies.items() if name != "unique_identity"}
    explained["unique_identity"] = [
        *_shared_sentences(hit, spans),
        *_sentences(tallies["unique_identity"], skip=frozenset({"shared_credential"})),
    ]
    shares = {name: _share(name, tally, total, explained[name]) for name, tally in tallies.items()}
    return {"shares": shares, "by_credential": dict(sorted(by_credential.items()))}


def _share(name: str, tally: _Tally, total: int, explanations: list[str]) -> dict[str, Any]:
    return {
        "label": LABELS[name],
        "value": round(tally.counted / total, 4) if total else None,
        "counted": tally.counted,
        "total": total,
        "missing": dict(tally.missing.most_common()),
        "missing_by_agent": {reason: dict(sorted(agents.items())) for reason, agents in tally.by_agent.items()},
        "explanations": explanations,
    }


def _actions(n: int) -> str:
    return f"{n} action{'' if n == 1 else 's'}"


def _sentences(tally: _Tally, skip: frozenset[str] = frozenset()) -> list[str]:
    out = []
    for reason, n in tally.missing.most_common():
        if reason in skip:
            continue
        agents = tally.by_agent[reason]
        out.append(
            f"{_actions(n)} {_LACKED[reason][n != 1]}" + (f" ({_named(agents)})" if reason != "no_agent" else "")
        )
    return out


def _named(agents: Counter[str]) -> str:
    ranked = sorted(agents.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{agent} {n}" for agent, n in ranked[:_AGENTS_NAMED])
    rest = len(ranked) - _AGENTS_NAMED
    return text + (f" and {rest} more agent{'' if rest == 1 else 's'}" if rest > 0 else "")


def _shared_sentences(hit: dict[str, Counter[int]], spans: dict[str, list[_Span]]) -> list[str]:
    """One sentence per agent: how many of its actions fell within its flags' windows, and what the flags saw."""
    out = []
    for agent, per_span in sorted(hit.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        concerned = [spans[agent][i] for i in per_span]
        flags = sum(s.flags for s in concerned)
        clients = max((s.clients for s in concerned if s.clients is not None), default=None)
        reach = max(s.reach for s in concerned)
        seen = f" by {clients} clients" if clients is not None else ""
        records = f"{flags} credential.shared_suspected record{'' if flags == 1 else 's'}"
        where = f"within {reach:g} s of {records}" if math.isfinite(reach) else f"{records} without a window"
        n = sum(per_span.values())
        out.append(
            f"{_actions(n)} of agent {agent} {'was' if n == 1 else 'were'} made while its credential was "
            f"flagged as shared{seen} ({where})"
        )
    return out
