"""Quality checks of recordings with FFmpeg's own detectors (blackdetect, freezedetect, silencedetect).

Runners (I/O) drive the ffmpeg binary through ffmpeg-python and read the detectors' log lines; the
parsers and the rules that turn intervals into warnings for an administrator are pure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Literal, Sequence

import ffmpeg as ffmpeg_python

from .ffmpeg_bin import FfmpegError, ffmpeg_run, log_end_s

Severity = Literal["warning", "error"]

_NUMBER = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
# blackdetect, one line per interval: "black_start:2 black_end:5.033333 black_duration:3.033333"
_BLACK = re.compile(rf"black_start:\s*{_NUMBER}\s+black_end:\s*{_NUMBER}")
# freezedetect logs the metadata it sets ("lavfi.freezedetect.freeze_start: 3"); metadata=mode=print
# repeats them as "lavfi.freezedetect.freeze_start=3": both are read, repeats are harmless.
_FREEZE = re.compile(rf"lavfi\.freezedetect\.freeze_(start|end)\s*[:=]\s*{_NUMBER}")
# silencedetect: "silence_start: 3.008" then "silence_end: 7.018542 | silence_duration: 4.010542"
_SILENCE = re.compile(rf"silence_(start|end):\s*{_NUMBER}")


class DetectorError(FfmpegError):
    """A detector run failed: the file is missing, unreadable, or has no stream of that kind."""


@dataclass(frozen=True)
class Interval:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# --- parsers (pure) -----------------------------------------------------------------------------------------

def parse_blackdetect(text: str) -> list[Interval]:
    """blackdetect reports whole intervals only; ffmpeg >= 5 also closes one still open at the end of input."""
    return [Interval(_clamp0(float(a)), float(b)) for a, b in _BLACK.findall(text)]


def parse_freezedetect(text: str, *, end_s: float | None = None) -> list[Interval]:
    """freezedetect never closes a freeze that lasts to the end of input: `end_s` closes it (if None, an
    open freeze is dropped, as nothing says how long it lasted)."""
    return _pair_events(_FREEZE.findall(text), end_s=end_s)


def parse_silencedetect(text: str, *, end_s: float | None) -> list[Interval]:
    """Older ffmpeg builds leave a silence that lasts to the end open: `end_s` closes it."""
    return _pair_events(_SILENCE.findall(text), end_s=end_s)


def _pair_events(events: Sequence[tuple[str, str]], *, end_s: float | None) -> list[Interval]:
    found: list[Interval] = []
    open_start: float | None = None
    for kind, value in events:
        moment = float(value)
        if kind == "start":
            if open_start is None:  # a repeated start (metadata printed twice) keeps the first
                open_start = _clamp0(moment)
        elif open_start is not None:
            found.append(Interval(open_start, max(open_start, moment)))
            open_start = None
    if open_start is not None and end_s is not None:
        found.append(Interval(open_start, max(open_start, end_s)))
    return found


def _clamp0(value: float) -> float:
    # silencedetect can report a start a few samples before 0 (its window reaches back)
    return max(0.0, value)


# --- runners (I/O) ------------------------------------------------------------------------------------------

def detect_black(*, path: Path, ffmpeg: str, min_s: float = 2.0, pix_th: float = 0.10) -> list[Interval]:
    """Intervals of at least `min_s` where the picture is (almost) black (FFmpeg's blackdetect)."""
    stream = ffmpeg_python.input(str(path)).video.filter("blackdetect", d=min_s, pix_th=pix_th)
    log = _run(stream, path=path, ffmpeg=ffmpeg, what="blackdetect")
    return _closed(parse_blackdetect(log), end_s=log_end_s(log))


def detect_freeze(*, path: Path, ffmpeg: str, min_s: float = 2.0, noise_db: float = -60) -> list[Interval]:
    """Intervals of at least `min_s` where the picture does not change (FFmpeg's freezedetect).

    -60 dB (FFmpeg's default) is strict: a still picture re-encoded by a fast, low-quality encoder
    (x264 ultrafast) still changes by more than that for a while after each keyframe; -50 dB tolerates it.
    """
    stream = ffmpeg_python.input(str(path)).video.filter("freezedetect", n=f"{noise_db}dB", d=min_s)
    log = _run(stream, path=path, ffmpeg=ffmpeg, what="freezedetect")
    end_s = log_end_s(log)
    return _closed(parse_freezedetect(log, end_s=end_s), end_s=end_s)


@dataclass(frozen=True)
class VideoFindings:
    black: list[Interval]
    frozen: list[Interval]


def detect_video(
    *, path: Path, ffmpeg: str, black_s: float = 2.0, frozen_s: float = 2.0, pix_th: float = 0.10, noise_db: float = -60
) -> VideoFindings:
    """blackdetect and freezedetect chained in ONE ffmpeg pass: the video is decoded once, not twice
    (decoding is nearly all of post-processing's cost). Same detectors, same parsers as above."""
    stream = (
        ffmpeg_python.input(str(path)).video
        .filter("blackdetect", d=black_s, pix_th=pix_th)
        .filter("freezedetect", n=f"{noise_db}dB", d=frozen_s)
    )
    log = _run(stream, path=path, ffmpeg=ffmpeg, what="blackdetect+freezedetect")
    end_s = log_end_s(log)
    return VideoFindings(
        black=_closed(parse_blackdetect(log), end_s=end_s),
        frozen=_closed(parse_freezedetect(log, end_s=end_s), end_s=end_s),
    )


def detect_silence(*, path: Path, ffmpeg: str, min_s: float = 3.0, noise_db: float = -50) -> list[Interval]:
    """Intervals of at least `min_s` below `noise_db` (FFmpeg's silencedetect, all channels together)."""
    stream = ffmpeg_python.input(str(path)).audio.filter("silencedetect", n=f"{noise_db}dB", d=min_s)
    log = _run(stream, path=path, ffmpeg=ffmpeg, what="silencedetect")
    end_s = log_end_s(log)
    return _closed(parse_silencedetect(log, end_s=end_s), end_s=end_s)


def _run(stream: Any, *, path: Path, ffmpeg: str, what: str) -> str:
    output = stream.output("-", format="null")
    return ffmpeg_run(output, ffmpeg=ffmpeg, error=DetectorError, what=f"{what} failed on {path.name}")


def _closed(intervals: list[Interval], *, end_s: float | None) -> list[Interval]:
    """Intervals never reach past the end of the media (detectors report the end of the last frame)."""
    if end_s is None:
        return intervals
    return [Interval(i.start_s, min(i.end_s, end_s)) for i in intervals if i.start_s < end_s]


# --- rules (pure) -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QcThresholds:
    black_s: float = 2.0
    frozen_s: float = 2.0
    silence_s: float = 3.0
    length_tolerance_ms: int = 1000


@dataclass(frozen=True)
class QcTrackInput:
    track_id: str
    kind: str  # "video" | "audio"
    expected_ms: int  # how long the track should be: its time on stage
    duration_ms: int | None  # None: the file is missing or unreadable
    frames: int
    black: Sequence[Interval] = field(default=())
    frozen: Sequence[Interval] = field(default=())
    silent: Sequence[Interval] = field(default=())


@dataclass(frozen=True)
class QcWarning:
    code: str
    track_id: str
    severity: Severity
    message: str
    start_ms: int | None = None
    end_ms: int | None = None


def qc_evaluate(
    *,
    tracks: Sequence[QcTrackInput],
    expected: Collection[str] = (),
    thresholds: QcThresholds = QcThresholds(),
) -> list[QcWarning]:
    """Warnings for an administrator, in track order then rule order then time; expected tracks that
    were not given come last.

    `expected`: ids of tracks that should exist (e.g. from the manifest); one with no input at all is
    `track_missing`, like one whose file could not be read. A missing or empty track gets no other
    warning: its black, frozen or length figures would only repeat the same fact.
    """
    warnings: list[QcWarning] = []
    for track in tracks:
        warnings.extend(_track_warnings(track, thresholds))
    present = {track.track_id for track in tracks}
    for track_id in dict.fromkeys(expected):  # in the caller's order, once each
        if track_id not in present:
            warnings.append(QcWarning("track_missing", track_id, "error", f"Track {track_id} has no recording file."))
    return warnings


def _track_warnings(track: QcTrackInput, thresholds: QcThresholds) -> list[QcWarning]:
    name = f"Track {track.track_id} ({track.kind})"
    if track.duration_ms is None:
        return [
            QcWarning(
                "track_missing",
                track.track_id,
                "error",
                f"{name} is missing or unreadable; {_clock(track.expected_ms)} of recording was expected.",
            )
        ]
    if track.frames <= 0:
        return [QcWarning("track_empty", track.track_id, "error", f"{name} has a file but nothing was recorded in it.")]
    found: list[QcWarning] = []
    found += _interval_warnings(track, track.black, "black_video", thresholds.black_s, f"{name} is black")
    found += _interval_warnings(track, track.frozen, "frozen_video", thresholds.frozen_s, f"{name} shows a frozen picture")
    found += _interval_warnings(track, track.silent, "silence", thresholds.silence_s, f"{name} is silent")
    gap_ms = track.duration_ms - track.expected_ms
    if abs(gap_ms) > thresholds.length_tolerance_ms:
        side = "shorter" if gap_ms < 0 else "longer"
        found.append(
            QcWarning(
                "length_mismatch",
                track.track_id,
                "warning",
                f"{name} lasts {_clock(track.duration_ms)} but was on stage for {_clock(track.expected_ms)} "
                f"({_span(abs(gap_ms))} {side}).",
            )
        )
    return found


def _interval_warnings(
    track: QcTrackInput, intervals: Sequence[Interval], code: str, min_s: float, what: str
) -> list[QcWarning]:
    found = []
    for interval in sorted(intervals, key=lambda i: (i.start_s, i.end_s)):
        if interval.duration_s + 1e-6 < min_s:
            continue
        start_ms, end_ms = round(interval.start_s * 1000), round(interval.end_s * 1000)
        message = f"{what} from {_clock(start_ms)} to {_clock(end_ms)} ({_clock(end_ms - start_ms)})."
        found.append(QcWarning(code, track.track_id, "warning", message, start_ms, end_ms))
    return found


def _span(ms: int) -> str:
    """A difference: tenths of a second when short (m:ss rounding would misstate 1.5 s), else m:ss."""
    return f"{ms / 1000:.1f} s" if ms < 60_000 else _clock(ms)


def _clock(ms: int) -> str:
    """m:ss, to the nearest second (minutes unbounded: a 75-minute lesson reads 75:00)."""
    seconds = (max(0, ms) + 500) // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"
