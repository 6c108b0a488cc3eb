"""Counting HLS viewers without a row per viewer: distinct viewers per 10 s bucket in the cache
(Redis when scaled out). Players poll the live playlist every segment, so each one lands in every bucket."""
from __future__ import annotations

import time

from django.core.cache import cache

from ..models import LiveSession, SessionStatus

WINDOW_S = 10


def _bucket(now: float | None) -> int:
    return int((time.time() if now is None else now) // WINDOW_S)


def viewer_seen(*, classroom_id: int, viewer_id: str, now: float | None = None) -> None:
    bucket = _bucket(now)
    if cache.add(f"hlsv:{classroom_id}:{bucket}:{viewer_id}", 1, timeout=WINDOW_S * 3):
        key = f"hlsn:{classroom_id}:{bucket}"
        if not cache.add(key, 1, timeout=WINDOW_S * 3):
            cache.incr(key)


def viewers_count(*, classroom_id: int, now: float | None = None) -> int:
    """Viewers of the last complete window, or of this one once it has more."""
    bucket = _bucket(now)
    counts = cache.get_many([f"hlsn:{classroom_id}:{bucket}", f"hlsn:{classroom_id}:{bucket - 1}"])
    return max(counts.values(), default=0)


def viewers_by_class() -> dict[int, int]:
    live = LiveSession.objects.filter(status=SessionStatus.LIVE).values_list("classroom_id", flat=True)
    return {classroom_id: viewers_count(classroom_id=classroom_id) for classroom_id in live}
