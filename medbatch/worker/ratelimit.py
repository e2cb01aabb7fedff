"""A rate limit shared by every worker through Redis: requests and tokens per minute.

Celery's own ``rate_limit`` is per worker process, so ten workers would send ten times the limit. This
limiter keeps one pair of fixed one-minute windows in Redis; a Lua script checks and takes both in
one atomic step, so concurrent workers on any number of hosts never exceed the limit together.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from medbatch.errors import BrokerUnavailable

_TAKE = """
local window = tonumber(ARGV[1])
local rpm, tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
if r + 1 > rpm or (t > 0 and t + tokens > tpm) then
  return redis.call('PTTL', KEYS[1])
end
redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], window)
redis.call('INCRBY', KEYS[2], tokens); redis.call('PEXPIRE', KEYS[2], window)
return -1
"""


class SharedRateLimiter:
    """Blocks until a request of ``tokens`` tokens fits in the current minute for every worker together."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.name = name
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.sleep = sleep
        self.clock = clock
        self._take = self.client.register_script(_TAKE)

    def _keys(self) -> tuple[str, str, int]:
        minute = int(self.clock() // 60)
        return f"medbatch:rl:{self.name}:{minute}:req", f"medbatch:rl:{self.name}:{minute}:tok", minute

    def acquire(self, tokens: int) -> float:
        """Take one request and ``tokens`` tokens, waiting for the next window when full.

        Returns:
            Seconds spent waiting.
        """
        waited = 0.0
        while True:
            req_key, tok_key, minute = self._keys()
            try:
                ttl_ms = self._take(keys=[req_key, tok_key], args=[61_000, self.rpm, self.tpm, max(0, tokens)])
            except redis.RedisError as exc:
                raise BrokerUnavailable(f"rate limiter unavailable: {type(exc).__name__}") from exc
            if ttl_ms == -1:
                return waited
            pause = max(0.05, (minute + 1) * 60 - self.clock())
            self.sleep(pause)
            waited += pause

    def settle(self, reserved: int, actual: int) -> None:
        """Correct the window by the difference between the tokens reserved and those really used."""
        if actual != reserved:
            try:
                self.client.incrby(self._keys()[1], actual - reserved)
            except redis.RedisError:
                pass  # the limit is a courtesy to the provider; losing one correction is harmless
