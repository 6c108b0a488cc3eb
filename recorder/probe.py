"""What a media file holds, read by demuxing only (no decoding), for manifests and checks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from . import RecorderError


class ProbeError(RecorderError):
    """The file is missing, not media, or holds no audio or video stream."""


@dataclass(frozen=True)
class ProbeResult:
    format: str  # FFmpeg's demuxer name, e.g. "matroska,webm"
    kinds: tuple[str, ...]  # kinds of all audio/video streams, in stream order
    kind: str  # kind of the main stream: the first video stream, else the first audio stream
    codec: str  # of the main stream
    duration_ms: int | None  # the container's duration, else the main stream's last packet end
    start_ms: int | None  # earliest packet pts of the main stream (a leading offset is kept)
    frames: int  # packets of the main stream
    size: int
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None


def media_probe(*, path: Path) -> ProbeResult:
    path = Path(path)
    try:
        size = path.stat().st_size
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ProbeError(f"{path.name}: not a readable media file ({exc})") from exc
    with container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        main = next((s for s in streams if s.type == "video"), streams[0] if streams else None)
        if main is None:
            raise ProbeError(f"{path.name}: no audio or video stream")
        frames, start_ms, end_ms = _scan(container, main)
        duration_ms = round(container.duration / 1000) if container.duration is not None else end_ms
        ctx = main.codec_context
        video = main.type == "video"
        return ProbeResult(
            format=container.format.name, kinds=tuple(s.type for s in streams), kind=main.type,
            codec=ctx.name, duration_ms=duration_ms, start_ms=start_ms, frames=frames, size=size,
            width=ctx.width if video else None, height=ctx.height if video else None,
            sample_rate=None if video else ctx.sample_rate, channels=None if video else ctx.channels,
        )


def _scan(container: Any, stream: Any) -> tuple[int, int | None, int | None]:
    """(packets, first pts ms, last end ms) of `stream`; a broken tail ends the count, not the probe."""
    frames, start_ms, end_ms = 0, None, None
    try:
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            frames += 1
            pts_ms = round(packet.pts * packet.time_base * 1000)
            packet_end = round((packet.pts + (packet.duration or 0)) * packet.time_base * 1000)
            start_ms = pts_ms if start_ms is None else min(start_ms, pts_ms)
            end_ms = packet_end if end_ms is None else max(end_ms, packet_end)
    except (av.FFmpegError, OSError):
        pass
    return frames, start_ms, end_ms
