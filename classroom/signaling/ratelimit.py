"""A token bucket per socket: bursts are fine, floods are refused message by message."""
from __future__ import annotations

import time


class TokenBucket:
    def __init__(self, *, rate_per_s: float, burst: float, clock=time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
