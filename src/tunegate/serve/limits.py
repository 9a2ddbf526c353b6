"""Admission limits of chat requests: what one request may ask for, and what one caller may use.

Owns the per-request bounds (`n`, `max_tokens`: a 400 naming the field beyond what the engine is
set to serve), the concurrency limit per API key, and the token budget per organisation (tokens per
minute, OpenAI's TPM: a token bucket charged with prompt + n x max_tokens when a request starts and
refunded what it did not use when it ends). A refusal is a 429 carrying `Retry-After` and OpenAI's
`x-ratelimit-*` headers. Does not own fair scheduling inside the engine (`serve/scheduler.py`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from tunegate.errors import InvalidRequestError, RateLimitError
from tunegate.settings import Settings


@dataclass(frozen=True)
class Caller:
    """Who sends a request: limits and fairness are per organisation and per API key."""

    org_id: str
    key_id: str


class Lease:
    """One admitted request's share of its caller's limits; `release` it exactly once when it ends."""

    def __init__(self, limits: ChatLimits, caller: Caller, tokens: int):
        self._limits, self.caller, self.tokens = limits, caller, tokens
        self._released = False

    def release(self, used_tokens: int | None = None) -> None:
        if not self._released:
            self._released = True
            self._limits._release(self, self.tokens if used_tokens is None else used_tokens)


class ChatLimits:
    """Bounds and budgets (see module docstring). Thread-safe; `clock` is injectable for tests."""

    def __init__(
        self,
        *,
        max_n: int,
        max_output_tokens: int,
        concurrency_per_key: int,
        tokens_per_minute: int | None,
        clock=time.monotonic,
    ):
        self.max_n = max_n
        self.max_output_tokens = max_output_tokens
        self.concurrency_per_key = concurrency_per_key
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # org -> (tokens available, at time)

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatLimits:
        return cls(
            max_n=settings.max_n,
            max_output_tokens=settings.max_output_tokens,
            concurrency_per_key=settings.chat_concurrency_per_key,
            tokens_per_minute=settings.chat_tokens_per_minute,
        )

    def check_request(self, n: int, max_tokens: int | None, max_tokens_param: str) -> None:
        """400 when `n` or `max_tokens` is beyond what this server serves in one request."""
        if n > self.max_n:
            raise InvalidRequestError(
                f"`n` is {n}, but this server generates at most {self.max_n} choices per request "
                "(TUNEGATE_MAX_N). Ask for fewer choices, or send several requests.",
                param="n",
                code="invalid_value",
            )
        if max_tokens is not None and max_tokens > self.max_output_tokens:
            raise InvalidRequestError(
                f"`{max_tokens_param}` is {max_tokens}, but this server generates at most {self.max_output_tokens} "
                f"tokens per choice (TUNEGATE_MAX_OUTPUT_TOKENS). Ask for at most {self.max_output_tokens}.",
                param=max_tokens_param,
                code="invalid_value",
            )

    def acquire(self, caller: Caller, tokens: int, max_tokens_param: str = "max_tokens") -> Lease:
        """Admit a request that may use up to `tokens` tokens, or raise 429 (400 if it can never fit)."""
        tpm = self.tokens_per_minute
        if tpm is not None and tokens > tpm:
            raise InvalidRequestError(
                f"This request may use {tokens} tokens (prompt + n x {max_tokens_param}), more than your "
                f"organisation's budget of {tpm} tokens per minute. Lower `{max_tokens_param}` or `n`, or shorten "
                "the messages.",
                param=max_tokens_param,
                code="tokens_exceeded",
            )
        with self._lock:
            running = self._in_flight.get(caller.key_id, 0)
            available = self._available(caller.org_id)
            if running >= self.concurrency_per_key:
                raise RateLimitError(
                    f"This API key already has {running} chat requests in flight (limit "
                    f"TUNEGATE_CHAT_CONCURRENCY_PER_KEY={self.concurrency_per_key}). Retry when one finishes.",
                    code="rate_limit_exceeded",
                    headers=self._headers(caller, 1.0, running),
                )
            if tpm is not None and available < tokens:
                wait = (tokens - available) * 60.0 / tpm
                raise RateLimitError(
                    f"Rate limit reached for your organisation: {tpm} tokens per minute, {int(available)} available, "
                    f"this request needs up to {tokens}. Retry in {wait:.1f} s, or lower `{max_tokens_param}`.",
                    code="rate_limit_exceeded",
                    headers=self._headers(caller, wait, running),
                )
            self._in_flight[caller.key_id] = running + 1
            if tpm is not None:
                self._buckets[caller.org_id] = (available - tokens, self.clock())
        return Lease(self, caller, tokens)

    def _available(self, org: str) -> float:
        tpm = self.tokens_per_minute
        if tpm is None:
            return math.inf
        level, at = self._buckets.get(org, (float(tpm), self.clock()))
        return min(float(tpm), level + (self.clock() - at) * tpm / 60.0)

    def _release(self, lease: Lease, used: int) -> None:
        with self._lock:
            left = self._in_flight.get(lease.caller.key_id, 1) - 1
            if left:
                self._in_flight[lease.caller.key_id] = left
            else:
                self._in_flight.pop(lease.caller.key_id, None)
            if self.tokens_per_minute is not None:
                refund = max(0, lease.tokens - used)
                level = self._available(lease.caller.org_id)
                self._buckets[lease.caller.org_id] = (min(float(self.tokens_per_minute), level + refund), self.clock())

    def _headers(self, caller: Caller, retry_after: float, running: int) -> dict[str, str]:
        """OpenAI's rate-limit headers; "requests" here counts concurrent requests of the key."""
        headers = {
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "x-ratelimit-limit-requests": str(self.concurrency_per_key),
            "x-ratelimit-remaining-requests": str(max(0, self.concurrency_per_key - running)),
            "x-ratelimit-reset-requests": "1s",
        }
        tpm = self.tokens_per_minute
        if tpm is not None:
            available = self._available(caller.org_id)
            headers.update(
                {
                    "x-ratelimit-limit-tokens": str(tpm),
                    "x-ratelimit-remaining-tokens": str(int(available)),
                    "x-ratelimit-reset-tokens": f"{(tpm - available) * 60.0 / tpm:.3g}s",
                }
            )
        return headers
