"""The audio mixer: every participant resampled to 48 kHz stereo float (one `AudioResampler` each),
buffered (bounded), summed per block, and kept from clipping by a limiter. Levels per participant
come from here (for the active speaker) along with the program's.

Levels are dBov: 20*log10(RMS) of samples in [-1, 1] (0 = a full-scale square wave, -127 = silence)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import av
import numpy as np

SILENCE_DBOV = -127.0


def level_dbov(samples: np.ndarray) -> float:
    if samples.size == 0:
        return SILENCE_DBOV
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float32))))
    return max(SILENCE_DBOV, 20 * math.log10(rms)) if rms > 0 else SILENCE_DBOV


@dataclass
class _Input:
    resampler: av.AudioResampler
    channels: int
    chunks: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    playing: bool = False  # False: refilling to the prebuffer after an underrun (absorbs network jitter)


@dataclass(frozen=True)
class MixedBlock:
    samples: np.ndarray  # (2, n) float32, within [-1, 1]
    levels: dict[int, float]  # participant -> dBov of what they contributed to this block
    level_dbov: float  # the program's


class AudioMixer:
    def __init__(
        self,
        *,
        rate: int = 48_000,
        max_buffer_s: float = 0.5,
        prebuffer_s: float = 0.06,
        limit_dbfs: float = -1.0,
        release_db_per_s: float = 20.0,
    ) -> None:
        self.rate = rate
        self.max_buffer = int(max_buffer_s * rate)
        self.prebuffer = int(prebuffer_s * rate)
        self.threshold = 10 ** (limit_dbfs / 20)  # the headroom the limiter keeps below full scale
        self.release_db_per_s = release_db_per_s
        self.gain = 1.0
        self.dropped_samples = 0
        self._inputs: dict[int, _Input] = {}

    def _resampler(self, channels: int) -> av.AudioResampler:
        # a mono microphone goes to both sides at full level (FFmpeg's upmix would put it 3 dB down)
        return av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=self.rate)

    def push(self, user_id: int, frame: av.AudioFrame) -> None:
        channels = len(frame.layout.channels)
        entry = self._inputs.get(user_id)
        if entry is None:
            entry = self._inputs[user_id] = _Input(self._resampler(channels), channels)
        try:
            if channels != entry.channels:
                raise ValueError("channel count changed")
            out = entry.resampler.resample(frame)
        except ValueError:  # the input's format/rate/layout changed mid-stream: start a new resampler
            entry.resampler, entry.channels = self._resampler(channels), channels
            out = entry.resampler.resample(frame)
        for resampled in out:
            data = resampled.to_ndarray().astype(np.float32, copy=False)
            if data.shape[0] == 1:
                data = np.repeat(data, 2, axis=0)
            entry.chunks.append(data[:2])
            entry.buffered += data.shape[1]
        if entry.buffered > self.max_buffer:  # a backlog is latency: keep only the newest prebuffer's worth
            data = np.concatenate(entry.chunks, axis=1)
            keep = data[:, -self.prebuffer :] if self.prebuffer else data[:, :0]
            self.dropped_samples += data.shape[1] - keep.shape[1]
            entry.chunks, entry.buffered = [keep], keep.shape[1]

    def forget(self, user_id: int) -> None:
        self._inputs.pop(user_id, None)

    def user_ids(self) -> set[int]:
        return set(self._inputs)

    def _take(self, entry: _Input, n: int) -> np.ndarray | None:
        if not entry.playing:
            if entry.buffered < max(n, self.prebuffer):
                return None
            entry.playing = True
        if not entry.chunks:  # drained exactly: an underrun like any other
            entry.playing = False
            return np.zeros((2, n), np.float32)
        data = np.concatenate(entry.chunks, axis=1) if len(entry.chunks) > 1 else entry.chunks[0]
        taken, rest = data[:, :n], data[:, n:]
        entry.chunks, entry.buffered = ([rest] if rest.shape[1] else []), rest.shape[1]
        if taken.shape[1] < n:  # underrun: pad with silence, then refill before playing again
            entry.playing = False
            taken = np.pad(taken, ((0, 0), (0, n - taken.shape[1])))
        return taken

    def mix(self, n: int) -> MixedBlock:
        mixed = np.zeros((2, n), np.float32)
        levels: dict[int, float] = {}
        for user_id, entry in self._inputs.items():
            block = self._take(entry, n)
            if block is None:
                continue
            levels[user_id] = level_dbov(block)
            mixed += block
        mixed = self._limit(mixed, n)
        return MixedBlock(mixed, levels, level_dbov(mixed))

    def _limit(self, mixed: np.ndarray, n: int) -> np.ndarray:
        """Instant attack (the whole block gets the gain its peak needs), linear release over blocks."""
        peak = float(np.max(np.abs(mixed))) if n else 0.0
        needed = min(1.0, self.threshold / peak) if peak > 0 else 1.0
        if needed <= self.gain:
            self.gain = needed
            mixed *= needed
        else:
            rise = 10 ** (self.release_db_per_s * n / self.rate / 20)
            target = min(needed, self.gain * rise)
            mixed *= np.linspace(self.gain, target, n, dtype=np.float32)  # below `needed` all the way
            self.gain = target
        return np.clip(mixed, -1.0, 1.0, out=mixed)  # float rounding only; the gain already did the work
