"""Turn a raw track file (possibly cut short by a crash) into a finished, seekable one.

A raw file written by TrackWriter and killed mid-way has clusters but no Duration and no Cues;
remuxing its packets untouched (timestamps kept, leading offset included) writes both. Bit-exact
muxing (no random UIDs, no version strings) makes the result depend only on the packets, so running
it again gives the same bytes."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av

from . import RecorderError

log = logging.getLogger("classcast.recorder.finalize")

# a finished file whose packets end this much before its declared Duration lost its tail (the margin
# covers guessed last-frame durations and Opus's codec delay, which Duration includes)
TAIL_TOLERANCE_MS = 100
FORMATS = {".webm": "webm", ".mkv": "matroska", ".mka": "matroska"}


class FinalizeError(RecorderError):
    """The source holds no readable media, or the result could not be written."""


@dataclass(frozen=True)
class FinalizeResult:
    path: Path
    packets: int
    first_ms: int  # pts of the first packet (the leading offset is kept)
    last_ms: int  # pts of the last packet copied
    end_ms: int  # last_ms + that packet's duration: where the media ends
    duration_ms: int | None  # the finished file's Duration as FFmpeg reads it back
    truncated: bool  # the source had no trailer or its tail could not be parsed
    size: int


def track_finalize(*, src: Path, dst: Path) -> FinalizeResult:
    """Remux `src` into `dst` (atomically, through a temporary file beside it); src may equal dst.

    FinalizeError: src holds nothing playable (retrying will not help). A failure to write dst (disk
    full...) is raised as the OSError/av.FFmpegError it is, so the caller can retry later."""
    src, dst = Path(src), Path(dst)
    out_format = FORMATS.get(dst.suffix.lower())
    if out_format is None:
        known = ", ".join(FORMATS)
        raise FinalizeError(f"{dst.name}: cannot finalize into {dst.suffix or 'no suffix'} (known: {known})")
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        copied = _remux(src=src, tmp=tmp, out_format=out_format)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename must not land before the data
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    with av.open(str(dst)) as check:
        duration_ms = None if check.duration is None else round(check.duration / 1000)
    return FinalizeResult(path=dst, duration_ms=duration_ms, size=dst.stat().st_size, **copied)


def _remux(*, src: Path, tmp: Path, out_format: str) -> dict[str, Any]:
    try:
        source = av.open(str(src))
    except (av.FFmpegError, OSError) as exc:
        raise FinalizeError(f"{src.name}: not a readable media file ({exc})") from exc
    with source:
        streams = [s for s in source.streams if s.type in ("audio", "video")]
        if not streams:
            raise FinalizeError(f"{src.name}: no audio or video stream")
        # Duration is only written by the trailer: without it the writer died
        declared_ms = None if source.duration is None else source.duration // 1000
        with av.open(str(tmp), "w", format=out_format) as out:
            out.flags |= av.container.Flags.bitexact.value  # a plain Flag, not an int
            mapping = {s.index: out.add_stream_from_template(s) for s in streams}
            packets, first_ms, last_ms, end_ms, tail_error = 0, None, 0, 0, False
            last_dts: dict[int, int] = {}
            frame_ms: dict[int, int] = {}
            for packet in _packets(source, streams):
                if packet is None:
                    tail_error = True
                    break
                index = packet.stream.index
                pts, dts = _ms(packet, packet.pts), _ms(packet, packet.dts)
                if index in last_dts and dts <= last_dts[index]:
                    tail_error = True  # garbage timestamps in a broken tail: stop at the last good one
                    log.info("%s: timestamps go back at %d ms, stopping there", src.name, dts)
                    break
                if index in last_dts:
                    frame_ms[index] = dts - last_dts[index]
                last_dts[index] = dts
                if not packet.duration and frame_ms.get(index):
                    # no stored duration: the previous gap is the best guess (the last frame counts)
                    packet.duration = round(Fraction(frame_ms[index], 1000) / packet.time_base)
                duration = _ms(packet, packet.duration or 0)
                packet.stream = mapping[index]
                out.mux(packet)
                packets += 1
                first_ms = pts if first_ms is None else min(first_ms, pts)
                last_ms, end_ms = pts, max(end_ms, pts + duration)
            if not packets:
                raise FinalizeError(f"{src.name}: no readable media packets")
    return {
        "packets": packets, "first_ms": first_ms, "last_ms": last_ms, "end_ms": end_ms,
        "truncated": tail_error or declared_ms is None or end_ms + TAIL_TOLERANCE_MS < declared_ms,
    }


def _packets(source: Any, streams: list[Any]) -> Iterator[Any]:
    """Demuxed media packets; yields None once, then stops, at the first demux/parse error."""
    demux = source.demux(*streams)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:
            log.info("unreadable tail: %s", exc)
            yield None
            return
        if packet.size and packet.pts is not None and packet.dts is not None:
            yield packet


def _ms(packet: Any, value: int) -> int:
    return round(value * packet.time_base * 1000)
