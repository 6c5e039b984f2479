"""Token buckets per key: `limit` requests per `window` seconds, refilled continuously.

In-process and approximate by design (each replica limits on its own): it
protects the unauthenticated OAuth endpoints from floods, it is not a quota.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_MAX_KEYS = 100_000
_SWEEP_EVERY = 1.0  # seconds between sweeps past _MAX_KEYS, so a flood of keys costs one scan a second at most


class RateLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.rate = limit / window  # tokens per second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)
        self._swept = float("-inf")

    def acquire(self, key: str) -> float | None:
        """Take one request from `key`'s bucket: None if allowed, else seconds until the next one is."""
        now = self.clock()
        tokens, updated = self._buckets.get(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - updated) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_KEYS and now - self._swept >= _SWEEP_EVERY:
            self._forget_full(now)
        return None

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        self._swept = now
        full = [k for k, (t, u) in self._buckets.items() if t + (now - u) * self.rate >= self.limit]
        for key in full:
            del self._buckets[key]
