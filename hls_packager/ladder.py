"""A quality ladder: several renditions of one program, each published on its own RTMP stream and cut
into its own folder, under one master playlist. Pure: stream-key form, H.264 levels, master text.

Stream keys: `<key>` publishes a single rendition into the session folder (OBS, ffmpeg, a one-rung
ladder); `<key>~<rendition>` publishes one rung into `<session folder>/<rendition>/`, and the session's
`live.m3u8` becomes the master playlist naming every rung of the configured ladder, so the URL players
already use gets adaptive bitrate. `~` is outside the alphabet of our stream keys (URL-safe base64)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from . import PackagerError

RENDITION_SEPARATOR = "~"
RENDITION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
AAC_LC = "mp4a.40.2"
# H.264 Annex A, table A-1: (level, max frame size in macroblocks, max macroblocks per second)
_H264_LEVELS = (
    ("1.3", 396, 11_880), ("2", 396, 11_880), ("2.1", 792, 19_800), ("2.2", 1_620, 20_250),
    ("3", 1_620, 40_500), ("3.1", 3_600, 108_000), ("3.2", 5_120, 216_000), ("4", 8_192, 245_760),
    ("4.1", 8_192, 245_760), ("4.2", 8_704, 522_240), ("5", 22_080, 589_824), ("5.1", 36_864, 983_040),
    ("5.2", 36_864, 2_073_600),
)


class LadderError(PackagerError):
    """A ladder or rendition that cannot be published or listed."""


@dataclass(frozen=True)
class Rendition:
    """One rung as the master playlist lists it. `width == 0`: audio only."""

    name: str
    bandwidth: int  # EXT-X-STREAM-INF BANDWIDTH: peak bits/s of a segment, container included
    average_bandwidth: int
    codecs: str
    width: int = 0
    height: int = 0
    fps: float = 0.0

    def __post_init__(self) -> None:
        if not RENDITION_NAME.match(self.name):
            raise LadderError(f"rendition name {self.name!r} must be letters, digits, '_' or '-'")
        if self.bandwidth <= 0 or not 0 < self.average_bandwidth <= self.bandwidth:
            raise LadderError(f"rendition {self.name!r}: 0 < AVERAGE-BANDWIDTH <= BANDWIDTH is required")

    @property
    def audio_only(self) -> bool:
        return self.width == 0


def rendition_key_split(key: str) -> tuple[str, str | None]:
    """(stream key, rendition name or None) of what a publisher sent; the name is not checked here."""
    base, separator, rendition = key.partition(RENDITION_SEPARATOR)
    return base, (rendition if separator else None)


def h264_level(*, width: int, height: int, fps: float) -> str:
    """The lowest H.264 level that holds this size and frame rate ("3.1" for 1280x720@30)."""
    frame_mbs = ((width + 15) // 16) * ((height + 15) // 16)
    for level, max_fs, max_mbps in _H264_LEVELS:
        if frame_mbs <= max_fs and frame_mbs * fps <= max_mbps:
            return level
    raise LadderError(f"no H.264 level holds {width}x{height}@{fps}")


def h264_codecs(level: str, *, profile_idc: int = 100) -> str:
    """RFC 6381 CODECS for H.264 (High profile by default) with AAC-LC: `avc1.64001f,mp4a.40.2`."""
    level_idc = int(round(float(level) * 10))
    return f"avc1.{profile_idc:02x}00{level_idc:02x},{AAC_LC}"


def master_playlist(renditions: Sequence[Rendition], *, playlist: str = "live.m3u8") -> str:
    """The master playlist: one EXT-X-STREAM-INF per rung, in the given order (top first), each pointing
    at `<name>/<playlist>`. The audio-only rung is a variant of its own (CODECS="mp4a.40.2"), not an
    EXT-X-MEDIA group: video rungs carry their audio muxed, so a player plays one playlist (one LL-HLS
    request stream per viewer, not two); players that fall back to audio (Safari, ExoPlayer) take it as
    the lowest rung, and hls.js leaves it out of its levels when video rungs exist."""
    if not renditions:
        raise LadderError("a master playlist needs at least one rendition")
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in renditions:
        attributes = [f"BANDWIDTH={r.bandwidth}", f"AVERAGE-BANDWIDTH={r.average_bandwidth}", f'CODECS="{r.codecs}"']
        if not r.audio_only:
            attributes += [f"RESOLUTION={r.width}x{r.height}", f"FRAME-RATE={r.fps:.3f}"]
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attributes))
        lines.append(f"{r.name}/{playlist}")
    return "\n".join(lines) + "\n"


def master_first_variant(text: str) -> str | None:
    """The folder of the first (top) variant a master playlist names; None if `text` is a media playlist."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:") and i + 1 < len(lines):
            folder, _, _ = lines[i + 1].partition("/")
            return folder if RENDITION_NAME.match(folder) else None
    return None
