"""Playlist text (HLS, RFC 8216) from segment records. Pure functions with golden tests; parsed back in
the tests with the `m3u8` package."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence


@dataclass(frozen=True)
class SegmentInfo:
    index: int  # the n of seg-<n>.ts
    sequence: int  # media sequence number: +1 per segment, never reused in a folder
    duration_s: float
    program_date_time: datetime  # wall clock of the segment's first frame (UTC)
    discontinuity: bool = False  # first segment of a publisher that came back

    @property
    def name(self) -> str:
        return segment_name(self.index)


def segment_name(index: int) -> str:
    return f"seg-{index}.ts"


def target_duration(segments: Sequence[SegmentInfo], configured_s: float) -> int:
    """EXT-X-TARGETDURATION: no EXTINF, rounded to the nearest integer, may exceed it (RFC 8216 4.3.3.1)."""
    longest = max((math.floor(s.duration_s + 0.5) for s in segments), default=0)
    return max(1, math.ceil(configured_s - 1e-9), longest)


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def render(
    segments: Sequence[SegmentInfo],
    *,
    target_s: int,
    discontinuity_sequence: int = 0,
    ended: bool = False,
    vod: bool = False,
    event: bool = False,
) -> str:
    first_sequence = segments[0].sequence if segments else 0
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target_s}", f"#EXT-X-MEDIA-SEQUENCE:{first_sequence}"]
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    elif event:
        lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")  # every segment starts on a keyframe
    for segment in segments:
        if segment.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_datetime(segment.program_date_time)}")
        lines.append(f"#EXTINF:{segment.duration_s:.3f},")
        lines.append(segment.name)
    if ended or vod:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def live_playlist(segments: Sequence[SegmentInfo], *, window: int, configured_s: float, ended: bool) -> str:
    """The sliding window: the last `window` segments; discontinuities that slid out are counted."""
    shown = list(segments[-window:]) if window > 0 else list(segments)
    dropped = segments[: len(segments) - len(shown)]
    return render(
        shown,
        target_s=target_duration(segments, configured_s),
        discontinuity_sequence=sum(1 for s in dropped if s.discontinuity),
        ended=ended,
    )


def vod_playlist(segments: Sequence[SegmentInfo], *, configured_s: float) -> str:
    return render(segments, target_s=target_duration(segments, configured_s), vod=True)


def archive_playlist(segments: Sequence[SegmentInfo], *, configured_s: float, ended: bool) -> str:
    """Every segment of the folder so far (EVENT playlist, only ever appended to): what the recorder
    cuts the program recording from while the broadcast is still live."""
    return render(segments, target_s=target_duration(segments, configured_s), event=True, ended=ended)
