"""Active speaker detection from audio levels, with hysteresis so the speaker layout does not flap.

Fed (user_id, level_dbov, t) samples (one per participant per mixed audio block). Each participant's
level is held like a peak meter (instant rise, `release_db_per_s` fall) so the pauses between words do
not count as silence. The first one to speak becomes active at once; after that a candidate must stay
louder than the active speaker (by `margin_db`) for `switch_after_s` before taking over. Silence keeps
the current speaker."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Meter:
    level: float
    t: float


class ActiveSpeakerDetector:
    def __init__(
        self,
        *,
        switch_after_s: float = 1.5,
        speech_dbov: float = -45.0,
        release_db_per_s: float = 30.0,
        margin_db: float = 1.0,
    ) -> None:
        self.switch_after_s = switch_after_s
        self.speech_dbov = speech_dbov
        self.release_db_per_s = release_db_per_s
        self.margin_db = margin_db
        self.active_speaker_id: int | None = None
        self._meters: dict[int, _Meter] = {}
        self._candidate: int | None = None
        self._candidate_since = 0.0

    def level_at(self, user_id: int, t: float) -> float:
        meter = self._meters.get(user_id)
        if meter is None:
            return float("-inf")
        return meter.level - self.release_db_per_s * max(0.0, t - meter.t)

    def observe(self, user_id: int, level_dbov: float, t: float) -> int | None:
        held = self.level_at(user_id, t)
        self._meters[user_id] = _Meter(max(level_dbov, held), t)
        return self._decide(t)

    def forget(self, user_id: int) -> None:
        self._meters.pop(user_id, None)
        if self.active_speaker_id == user_id:
            self.active_speaker_id = None
        if self._candidate == user_id:
            self._candidate = None

    def _decide(self, t: float) -> int | None:
        levels = {uid: self.level_at(uid, t) for uid in self._meters}
        loudest = max(levels, key=levels.__getitem__, default=None)
        if loudest is None or levels[loudest] < self.speech_dbov:
            self._candidate = None
            return self.active_speaker_id
        if self.active_speaker_id is None:
            self.active_speaker_id = loudest
            self._candidate = None
        elif loudest != self.active_speaker_id and levels[loudest] > levels.get(
            self.active_speaker_id, float("-inf")
        ) + self.margin_db:
            if self._candidate != loudest:
                self._candidate, self._candidate_since = loudest, t
            elif t - self._candidate_since >= self.switch_after_s:
                self.active_speaker_id, self._candidate = loudest, None
        else:
            self._candidate = None
        return self.active_speaker_id
