"""The ffmpeg binary that ffmpeg-python drives (exports, thumbnails, quality checks), and one way to run it.

The binary inside the imageio-ffmpeg wheel (ffmpeg 9) has every filter and demuxer the recorder uses
(blackdetect, freezedetect, silencedetect, the hls demuxer, libx264, mjpeg), so no system package is
needed; an `ffmpeg` on PATH wins so operators can choose their own build.
"""
from __future__ import annotations

import re
import shutil
from typing import Any

import ffmpeg as ffmpeg_python

from . import RecorderError

_TAIL_LINES = 12
# The stats line ffmpeg prints at the end of every run ("... time=00:01:02.34 ..."), and the input header.
_STATS_TIME = re.compile(r"\btime=(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_INPUT_DURATION = re.compile(r"^\s*Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", re.MULTILINE)


class FfmpegError(RecorderError):
    """ffmpeg could not do the job (unreadable input, missing binary, ...); carries the end of its log."""

    def __init__(self, message: str, *, stderr_tail: str = "") -> None:
        super().__init__(f"{message}: {stderr_tail}" if stderr_tail else message)
        self.stderr_tail = stderr_tail


def ffmpeg_default() -> str:
    """`ffmpeg` from PATH, else the binary shipped in the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # only when needed: it resolves (and may check) its bundled binary

    return imageio_ffmpeg.get_ffmpeg_exe()


def stderr_tail(text: str, *, lines: int = _TAIL_LINES) -> str:
    """The last lines of an ffmpeg log, progress lines (joined by carriage returns) split apart."""
    kept = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(kept[-lines:])


def ffmpeg_run(stream: Any, *, ffmpeg: str, error: type[FfmpegError], what: str) -> str:
    """Run an ffmpeg-python stream with `ffmpeg`; return its log (stderr) or raise `error` with the tail.

    -nostdin: a child reading our stdin would steal a terminal's (or pytest's) input.
    -loglevel info: the detectors report at info level, whatever the environment asks for.
    """
    command = stream.global_args("-hide_banner", "-nostdin", "-loglevel", "info")
    try:
        _, err = command.run(cmd=ffmpeg, capture_stdout=True, capture_stderr=True, overwrite_output=True)
    except ffmpeg_python.Error as exc:
        raise error(what, stderr_tail=stderr_tail(_text(exc.stderr))) from exc
    except OSError as exc:  # the binary itself is missing or not executable
        raise error(f"{what}: cannot run {ffmpeg!r} ({exc})") from exc
    return _text(err)


def log_end_s(text: str) -> float | None:
    """Where the processed media ended, from an ffmpeg log: the last stats `time=` (the end of what the
    filters saw), else the input's `Duration:` header; None when the log has neither."""
    times = _STATS_TIME.findall(text)
    match = times[-1] if times else None
    if match is None:
        header = _INPUT_DURATION.search(text)
        match = header.groups() if header else None
    if match is None:
        return None
    hours, minutes, seconds = match
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
