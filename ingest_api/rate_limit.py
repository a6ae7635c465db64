"""Per-API-key rate limit: a token bucket in Redis, one atomic Lua script per request.

Each key has a bucket of ``MAILROOM_RATE_LIMIT_BURST`` tokens that refills at
``MAILROOM_RATE_LIMIT_RATE`` tokens per second; a request takes one token or is
answered 429. The script reads Redis's clock, so every API process and host
shares one bucket per key without trusting its own clock, and the bucket's key
expires once it would be full again (a missing key is a full bucket).

The limiter fails open: a rate limiter must never be the reason mail is refused
or lost. Redis gets ``REDIS_TIMEOUT_SECONDS`` to answer (connect and read, no
retries); any failure lets the request through, counts in
``mailroom_rate_limit_failures_total``, and makes this process skip Redis for
``FAILURE_BACKOFF_SECONDS``, so a dead or hanging Redis costs one timeout per
process per backoff period instead of one per request. After the backoff one
request probes Redis again while the others keep skipping. One warning is
logged when an incident starts and one line when Redis answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ingest_api.metrics import RATE_LIMIT_FAILURES, RATE_LIMIT_REQUESTS
from shared.config import Settings

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.05
FAILURE_BACKOFF_SECONDS = 5.0

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst (capacity), cost (tokens).
# Returns {allowed (1/0), tokens left as a string}: Lua numbers returned to
# Redis would be truncated to integers.
BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
    tokens = burst
    ts = now
end
local elapsed = now - ts
if elapsed < 0 then
    elapsed = 0
end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one request, and the headers that describe it."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after_seconds: int  # until the next token; 0 when allowed

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` as in draft-ietf-httpapi-ratelimit-headers; Retry-After on 429."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


class RateLimiter:
    """One token bucket per API key in Redis, failing open. Thread-safe."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate: float,
        burst: int,
        prefix: str,
        backoff: float = FAILURE_BACKOFF_SECONDS,
    ) -> None:
        self.client = client
        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self.backoff = backoff
        self._script = client.register_script(BUCKET_LUA)
        self._lock = threading.Lock()
        self._failing = False  # an incident is going on (logged once, at its start)
        self._skip_until = 0.0  # monotonic time before which Redis is not asked

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter ``MAILROOM_RATE_LIMIT_*`` describe, or None when no URL is set."""
        if not settings.rate_limit_url:
            return None
        client = redis.Redis.from_url(
            settings.rate_limit_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a retry would double the worst-case delay
            health_check_interval=0,
        )
        return cls(
            client,
            rate=settings.rate_limit_rate,
            burst=settings.rate_limit_burst,
            prefix=settings.rate_limit_prefix,
        )

    def bucket_key(self, bucket: str) -> str:
        return self.prefix + bucket

    def take(self, bucket: str) -> Decision | None:
        """Take one token from *bucket*; None means "no decision, let it through"."""
        if not self._may_ask_redis():
            RATE_LIMIT_REQUESTS.labels(result="unchecked").inc()
            return None
        try:
            reply: Any = self._script(
                keys=[self.bucket_key(bucket)], args=[repr(self.rate), self.burst, 1]
            )
            allowed, tokens = bool(int(reply[0])), float(reply[1])
        except Exception as exc:  # whatever went wrong, the request must go ahead
            self._failed(exc)
            RATE_LIMIT_REQUESTS.labels(result="unchecked").inc()
            return None
        self._succeeded()
        RATE_LIMIT_REQUESTS.labels(result="allowed" if allowed else "limited").inc()
        return self._decision(allowed, tokens)

    def _decision(self, allowed: bool, tokens: float) -> Decision:
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=max(0, math.floor(tokens)),
            reset_seconds=max(0, math.ceil((self.burst - tokens) / self.rate)),
            retry_after_seconds=0 if allowed else max(1, math.ceil((1 - tokens) / self.rate)),
        )

    def _may_ask_redis(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._skip_until:
                return False
            if self._failing:
                # This request probes Redis; the others keep skipping meanwhile.
                self._skip_until = now + self.backoff
            return True

    def _failed(self, exc: Exception) -> None:
        RATE_LIMIT_FAILURES.inc()
        with self._lock:
            self._skip_until = time.monotonic() + self.backoff
            first = not self._failing
            self._failing = True
        if first:
            log.warning(
                "rate limiting is off: its Redis failed; requests go ahead unlimited,"
                " Redis is asked again every %.0f s",
                self.backoff,
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )

    def _succeeded(self) -> None:
        if not self._failing:  # the common case, without taking the lock
            return
        with self._lock:
            was_failing, self._failing, self._skip_until = self._failing, False, 0.0
        if was_failing:
            log.warning("rate limiting is back: its Redis answers again")
