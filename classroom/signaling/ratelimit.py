"""Token buckets for the class socket: bursts are fine, floods are refused message by message.

A person's sockets in one process share one bucket (`SocketBudgets`), so opening more tabs or
sockets does not buy more messages, and a cap on their concurrent sockets per class bounds what
they hold open. Both live in process memory: with N web processes behind a balancer a person gets
at most N times the budget and N times the socket cap, which still bounds them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable


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

    def full(self) -> bool:
        return self.tokens + (self.clock() - self.updated) * self.rate >= self.burst


class SocketBudgets:
    """Per-user buckets shared by that user's open sockets, and a count of their sockets per class.

    `open` reserves a socket slot and returns the user's bucket (None when the cap is reached);
    every successful `open` is paired with one `close`. A bucket outlives the user's last socket
    until it has refilled, so closing and reopening a socket does not refill it early.
    """

    def __init__(self) -> None:
        self._buckets: dict[Hashable, tuple[TokenBucket, int]] = {}  # user -> (bucket, open sockets)
        self._sockets: dict[tuple[Hashable, Hashable], int] = {}
        self._prune_at = 1024

    def open(
        self, *, user: Hashable, classroom: Hashable, max_sockets: int, bucket: Callable[[], TokenBucket]
    ) -> TokenBucket | None:
        slot = (user, classroom)
        if max_sockets > 0 and self._sockets.get(slot, 0) >= max_sockets:
            return None
        self._sockets[slot] = self._sockets.get(slot, 0) + 1
        if len(self._buckets) >= self._prune_at:
            self._prune()
        shared, count = self._buckets.get(user) or (bucket(), 0)
        self._buckets[user] = (shared, count + 1)
        return shared

    def close(self, *, user: Hashable, classroom: Hashable) -> None:
        slot = (user, classroom)
        left = self._sockets.get(slot, 0) - 1
        if left > 0:
            self._sockets[slot] = left
        else:
            self._sockets.pop(slot, None)
        entry = self._buckets.get(user)
        if entry is not None:
            self._buckets[user] = (entry[0], max(0, entry[1] - 1))

    def _prune(self) -> None:
        """Forget buckets of users with no socket left that have refilled (a new one would be the same)."""
        for user, (bucket, count) in list(self._buckets.items()):
            if count == 0 and bucket.full():
                del self._buckets[user]
        self._prune_at = max(1024, 2 * len(self._buckets))

    def sockets(self, *, user: Hashable, classroom: Hashable) -> int:
        return self._sockets.get((user, classroom), 0)
