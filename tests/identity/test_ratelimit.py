from __future__ import annotations

from gateway.http.ratelimit import RateLimiter


def test_a_bucket_allows_its_limit_then_refills_over_the_window():
    now = [0.0]
    limiter = RateLimiter(3, 60, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("a")
    assert wait is not None and 0 < wait <= 20
    assert limiter.acquire("b") is None  # keys are independent
    now[0] = 20.0
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is not None
