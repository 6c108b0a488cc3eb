"""A JPEG thumbnail of a recording (one frame, scaled), made by the ffmpeg binary through ffmpeg-python."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import av
import ffmpeg as ffmpeg_python

from .ffmpeg_bin import FfmpegError, ffmpeg_run


class ThumbnailError(FfmpegError):
    """No thumbnail could be made: unreadable file, no video stream, or ffmpeg failed."""


def thumbnail_make(*, video: Path, out: Path, at_s: float, width: int = 320, ffmpeg: str) -> None:
    """The frame at `at_s` (clamped into the video), `width` pixels wide, height even, aspect kept."""
    if width < 2 or width % 2:
        raise ValueError("width must be an even number of pixels")
    at = min(max(0.0, at_s), _last_frame_s(video))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    failure: ThumbnailError | None = None
    try:
        # -ss before -i seeks in the demuxer (fast), but MPEG-TS seeking can land past the last keyframe
        # and yield no frame; then -ss after -i decodes from the start up to `at` (slow, always right).
        for fast in (True, False):
            try:
                _grab(video=video, tmp=tmp, at=at, width=width, fast=fast, ffmpeg=ffmpeg)
            except ThumbnailError as exc:
                failure = exc
                continue
            if tmp.is_file() and tmp.stat().st_size > 0:
                os.replace(tmp, out)
                return
        raise failure or ThumbnailError(f"ffmpeg wrote no frame of {video.name} at {at:.3f} s")
    finally:
        tmp.unlink(missing_ok=True)


def _grab(*, video: Path, tmp: Path, at: float, width: int, fast: bool, ffmpeg: str) -> None:
    seek = {"ss": f"{at:.3f}"}
    stream = (
        ffmpeg_python.input(str(video), **(seek if fast else {}))
        .video.filter("scale", width, -2)  # -2: the height that keeps the aspect, rounded to even
        .output(str(tmp), format="image2", vcodec="mjpeg", update=1, **{"frames:v": 1, "q:v": 3}, **({} if fast else seek))
    )
    ffmpeg_run(stream, ffmpeg=ffmpeg, error=ThumbnailError, what=f"cannot make a thumbnail of {video.name}")


def _last_frame_s(video: Path) -> float:
    """Seconds from the start of the file to (about) its last video frame: seeking past it yields
    nothing. Infinite when the file does not say how long it is (no clamping then)."""
    try:
        with av.open(str(video)) as container:
            stream = next(iter(container.streams.video), None)
            if stream is None:
                raise ThumbnailError(f"{video.name} has no video stream")
            origin = (container.start_time or 0) / av.time_base
            if stream.duration and stream.time_base is not None:
                begin = float((stream.start_time or 0) * stream.time_base) - origin
                end = begin + float(stream.duration * stream.time_base)
            elif container.duration:
                end = container.duration / av.time_base
            else:
                return float("inf")
            rate = float(stream.average_rate or 0)
    except av.FFmpegError as exc:
        raise ThumbnailError(f"cannot read {video.name}: {exc}") from exc
    # two frame intervals back from the end (1 s when the rate is unknown), never before the start
    return max(0.0, end - (2.0 / rate if rate > 0 else 1.0))
