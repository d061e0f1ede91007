"""Token buckets, in this process: requests per API key, and failed key checks per client
address (``auth.current_lab``).

Each key may make ``burst`` requests at once and ``per_minute`` sustained. In-process is
enough for one gateway process; behind several (uvicorn --workers N) each holds its own
buckets, so the effective limit is N times the setting.
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    # Buckets kept at most (client addresses are many): past it, the full ones are forgotten,
    # which changes nothing (a missing bucket is a full one).
    MAX_BUCKETS = 10_000

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, key: str) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(key, now)
            if key not in self._buckets and len(self._buckets) >= self.MAX_BUCKETS:
                self._prune(now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """What ``take`` would answer, spending nothing: 0.0 if a token is there."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._tokens(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.MAX_BUCKETS:  # all of them busy: bounded all the same
            self._buckets.clear()
