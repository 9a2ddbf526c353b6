"""Admission limits alone: request bounds naming the field, per-key concurrency, the per-organisation
token bucket (charge, refund, refill) and OpenAI's rate-limit headers on every 429."""

from __future__ import annotations

import pytest

from tunegate.errors import InvalidRequestError, RateLimitError
from tunegate.serve.limits import Caller, ChatLimits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def limits(clock, **kw):
    args = {"max_n": 4, "max_output_tokens": 100, "concurrency_per_key": 2, "tokens_per_minute": 600}
    return ChatLimits(**{**args, **kw}, clock=clock)


def test_bounds_name_the_field():
    lim = limits(Clock())
    lim.check_request(4, 100, "max_tokens")
    lim.check_request(1, None, "max_tokens")
    for n, m, name, param in [
        (5, 10, "max_tokens", "n"),
        (1, 101, "max_tokens", "max_tokens"),
        (1, 101, "max_completion_tokens", "max_completion_tokens"),
    ]:
        with pytest.raises(InvalidRequestError) as err:
            lim.check_request(n, m, name)
        assert err.value.param == param and err.value.status_code == 400


def test_concurrency_per_key_with_headers_and_release():
    lim = limits(Clock(), tokens_per_minute=None)
    a1, a2 = Caller("org", "k1"), Caller("org", "k2")
    leases = [lim.acquire(a1, 10), lim.acquire(a1, 10)]
    with pytest.raises(RateLimitError) as err:
        lim.acquire(a1, 10)
    h = err.value.headers
    assert h["Retry-After"] == "1" and h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "0" and "x-ratelimit-limit-tokens" not in h
    lim.acquire(a2, 10)  # another key of the same organisation is not affected
    leases[0].release()
    leases[0].release()  # idempotent: a double release does not free a second slot
    lim.acquire(a1, 10)
    with pytest.raises(RateLimitError):
        lim.acquire(a1, 10)


def test_token_bucket_charges_refunds_and_refills():
    clock = Clock()
    lim = limits(clock, concurrency_per_key=100)
    org, other = Caller("o", "k"), Caller("p", "k2")
    big = lim.acquire(org, 500)  # 600 per minute: 100 left
    with pytest.raises(RateLimitError) as err:
        lim.acquire(org, 200)
    h = err.value.headers
    assert h["x-ratelimit-limit-tokens"] == "600" and h["x-ratelimit-remaining-tokens"] == "100"
    assert h["Retry-After"] == "10"  # 100 more tokens at 10 tokens per second
    assert h["x-ratelimit-reset-tokens"] == "50s"
    lim.acquire(other, 500)  # each organisation has its own budget
    big.release(used_tokens=150)  # 350 unused tokens come back
    lim.acquire(org, 400)  # 450 available
    with pytest.raises(RateLimitError):
        lim.acquire(org, 100)
    clock.now += 6  # 60 tokens refilled
    lim.acquire(org, 100)
    with pytest.raises(InvalidRequestError) as err:  # can never fit: a 400, not a retry
        lim.acquire(org, 601, "max_completion_tokens")
    assert err.value.param == "max_completion_tokens" and err.value.code == "tokens_exceeded"
