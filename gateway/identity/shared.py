"""Shared-credential detection: one agent credential used from too many distinct clients at once.

A client's fingerprint is its remote address plus the MCP `clientInfo` name and
version. An agent seen from more than `max_fingerprints` fingerprints within
`window` seconds is likely sharing its credential (a copied secret, a token
pasted into several tools): the first request of each fingerprint past the
limit yields a `credential.shared_suspected` record, and with `block: true`
the requests of those extra fingerprints are refused while the window lasts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.files import SharedCredentials

Fingerprint = tuple[str | None, str | None, str | None]  # remote address, clientInfo name, clientInfo version


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    report: dict[str, Any] | None = None  # the fields of a credential.shared_suspected record to write


ALLOWED = Verdict(True)


class SharedCredentialDetector:
    def __init__(self, settings: SharedCredentials, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._seen: dict[str, OrderedDict[Fingerprint, float]] = {}  # agent -> admitted fingerprint -> last seen
        self._excess: dict[str, OrderedDict[Fingerprint, float]] = {}  # agent -> flagged fingerprint -> reported at

    def observe(self, agent: str, fingerprint: Fingerprint) -> Verdict:
        """Record one request of `agent` from `fingerprint`: whether to serve it, and what to report."""
        now = self.clock()
        window = self.settings.window
        seen = self._seen.setdefault(agent, OrderedDict())
        while seen and now - next(iter(seen.values())) >= window:  # oldest first, until one is inside the window
            seen.popitem(last=False)
        if fingerprint in seen or len(seen) < self.settings.max_fingerprints:
            seen[fingerprint] = now
            seen.move_to_end(fingerprint)
            return ALLOWED
        excess = self._excess.setdefault(agent, OrderedDict())
        while excess and now - next(iter(excess.values())) >= window:  # reported in order: oldest first
            excess.popitem(last=False)
        report = None
        if fingerprint not in excess:
            excess[fingerprint] = now
            report = {
                "remote_addr": fingerprint[0],
                "client": fingerprint[1],
                "client_version": fingerprint[2],
                "fingerprints": len(seen) + 1,
                "max_fingerprints": self.settings.max_fingerprints,
                "window_s": window,
                "blocked": self.settings.block,
            }
        if self.settings.block:
            return Verdict(False, report)
        seen[fingerprint] = now
        return Verdict(True, report)
