"""Playlist text (HLS, RFC 8216; Low-Latency HLS, RFC 8216bis) from segment records. Pure functions with
golden tests; parsed back in the tests with the `m3u8` package."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence


@dataclass(frozen=True)
class PartInfo:
    """One partial segment (EXT-X-PART): its own file, bytes that are also a slice of the segment."""

    name: str
    duration_s: float
    independent: bool  # starts with a keyframe: a player may start here


@dataclass(frozen=True)
class SegmentInfo:
    index: int  # the n of seg-<n>.ts
    sequence: int  # media sequence number: +1 per segment, never reused in a folder
    duration_s: float
    program_date_time: datetime  # wall clock of the segment's first frame (UTC)
    discontinuity: bool = False  # first segment of a publisher that came back
    parts: tuple[PartInfo, ...] = ()  # its partial segments, while they are listed (low latency)

    @property
    def name(self) -> str:
        return segment_name(self.index)


@dataclass(frozen=True)
class LiveEdge:
    """The low-latency side of a live playlist: the segment being written, part by part."""

    part_target_s: float  # EXT-X-PART-INF PART-TARGET; no part is longer
    parts: tuple[PartInfo, ...]  # parts of the open segment so far
    hint: str  # the part being written now (EXT-X-PRELOAD-HINT)
    program_date_time: datetime | None = None  # of the open segment's first frame, once it has a part
    discontinuity: bool = False  # the open segment is the first of a publisher that came back
    parts_segments: int = 3  # completed segments that still list their parts (3 target durations)

    @property
    def part_hold_back_s(self) -> float:
        # RFC 8216bis 4.4.3.8: at least twice, and SHOULD be three times, the part target.
        return 3 * self.part_target_s


def segment_name(index: int) -> str:
    return f"seg-{index}.ts"


def part_name(index: int, part: int) -> str:
    return f"seg-{index}.part{part}.ts"


def target_duration(segments: Sequence[SegmentInfo], configured_s: float) -> int:
    """EXT-X-TARGETDURATION: no EXTINF, rounded to the nearest integer, may exceed it (RFC 8216 4.3.3.1)."""
    longest = max((math.floor(s.duration_s + 0.5) for s in segments), default=0)
    return max(1, math.ceil(configured_s - 1e-9), longest)


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _part_line(part: PartInfo) -> str:
    independent = ",INDEPENDENT=YES" if part.independent else ""
    return f'#EXT-X-PART:DURATION={part.duration_s:.5f},URI="{part.name}"{independent}'


def render(
    segments: Sequence[SegmentInfo],
    *,
    target_s: int,
    discontinuity_sequence: int = 0,
    ended: bool = False,
    vod: bool = False,
    event: bool = False,
    edge: LiveEdge | None = None,
) -> str:
    """The playlist. With `edge` (a live low-latency playlist): server control, part info, the parts of
    the last few segments and of the open one, and the preload hint; players that do not know these tags
    skip them (RFC 8216 4.1) and play the same segments as before."""
    edge = None if ended or vod else edge
    first_sequence = segments[0].sequence if segments else 0
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{6 if edge else 3}", f"#EXT-X-TARGETDURATION:{target_s}"]
    if edge is not None:
        lines.append(
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={edge.part_hold_back_s:.3f},HOLD-BACK={3 * target_s:.3f}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={edge.part_target_s:.5f}")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first_sequence}")
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    elif event:
        lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")  # every segment starts on a keyframe
    with_parts = len(segments) - edge.parts_segments if edge is not None else len(segments)
    for position, segment in enumerate(segments):
        if segment.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_datetime(segment.program_date_time)}")
        if position >= with_parts:
            lines.extend(_part_line(part) for part in segment.parts)
        lines.append(f"#EXTINF:{segment.duration_s:.3f},")
        lines.append(segment.name)
    if edge is not None:
        if edge.parts:
            if edge.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if edge.program_date_time is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_datetime(edge.program_date_time)}")
            lines.extend(_part_line(part) for part in edge.parts)
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{edge.hint}"')
    if ended or vod:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def live_playlist(
    segments: Sequence[SegmentInfo], *, window: int, configured_s: float, ended: bool, edge: LiveEdge | None = None
) -> str:
    """The sliding window: the last `window` segments; discontinuities that slid out are counted."""
    shown = list(segments[-window:]) if window > 0 else list(segments)
    dropped = segments[: len(segments) - len(shown)]
    return render(
        shown,
        target_s=target_duration(segments, configured_s),
        discontinuity_sequence=sum(1 for s in dropped if s.discontinuity),
        ended=ended,
        edge=edge,
    )


def vod_playlist(segments: Sequence[SegmentInfo], *, configured_s: float) -> str:
    return render(segments, target_s=target_duration(segments, configured_s), vod=True)


def archive_playlist(segments: Sequence[SegmentInfo], *, configured_s: float, ended: bool) -> str:
    """Every segment of the folder so far (EVENT playlist, only ever appended to): what the recorder
    cuts the program recording from while the broadcast is still live."""
    return render(segments, target_s=target_duration(segments, configured_s), event=True, ended=ended)


# --- blocking playlist reload (RFC 8216bis 6.2.5.2), pure -----------------------------------------------

@dataclass(frozen=True)
class PlaylistPosition:
    """How far a live playlist has got, read back from its text."""

    last_msn: int  # media sequence number of the last complete segment (-1: none yet)
    last_part: tuple[int, int] | None  # (msn, part index) of the newest part listed
    hint: str | None  # EXT-X-PRELOAD-HINT URI
    part_target_s: float | None
    target_s: int
    ended: bool

    @property
    def open_msn(self) -> int:
        """The segment being written (the one the preload hint belongs to)."""
        return self.last_msn + 1


def playlist_position(text: str) -> PlaylistPosition:
    """A one-pass scan (cheaper than a full parse; every waiting reload runs it on each change)."""
    msn, last_msn, parts_in_segment = 0, -1, 0
    last_part: tuple[int, int] | None = None
    hint, part_target, target, ended = None, None, 0, False
    for line in text.splitlines():
        if not line.startswith("#"):
            if line:  # a segment URI: the segment `msn` is complete
                last_msn, msn, parts_in_segment = msn, msn + 1, 0
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-MEDIA-SEQUENCE":
            msn = int(value)
        elif tag == "#EXT-X-TARGETDURATION":
            target = int(value)
        elif tag == "#EXT-X-PART":
            last_part = (msn, parts_in_segment)
            parts_in_segment += 1
        elif tag == "#EXT-X-PART-INF":
            part_target = float(_attribute(value, "PART-TARGET") or 0) or None
        elif tag == "#EXT-X-PRELOAD-HINT":
            hint = _attribute(value, "URI")
        elif tag == "#EXT-X-ENDLIST":
            ended = True
    return PlaylistPosition(last_msn, last_part, hint, part_target, target, ended)


def _attribute(attributes: str, name: str) -> str | None:
    for item in attributes.split(","):
        key, _, value = item.partition("=")
        if key == name:
            return value.strip('"')
    return None


class BlockingRequestError(ValueError):
    """A blocking reload asked for something the playlist will not have soon (HTTP 400)."""


def blocking_request_check(position: PlaylistPosition, *, msn: int, part: int | None) -> None:
    """RFC 8216bis 6.2.5.2: more than two segments ahead of the last one, or parts further ahead than
    the Advance Part Limit, are a bad request; so is a negative number."""
    if msn < 0 or (part is not None and part < 0):
        raise BlockingRequestError("_HLS_msn and _HLS_part must not be negative")
    if msn > position.open_msn + 2:
        raise BlockingRequestError(f"_HLS_msn={msn} is more than two segments after {position.open_msn}")
    if part is not None and position.part_target_s:
        # The Advance Part Limit: 3 / PART-TARGET parts (3 when parts are a second or longer).
        limit = 3 / position.part_target_s if position.part_target_s < 1 else 3
        newest_msn, newest_part = position.last_part or (position.open_msn, -1)
        ahead = part - newest_part if msn == newest_msn else part + 1 if msn > newest_msn else 0
        if ahead > limit:
            raise BlockingRequestError(f"_HLS_part={part} of segment {msn} is too far ahead")


def blocking_request_ready(position: PlaylistPosition, *, msn: int, part: int | None) -> bool:
    """True once the playlist holds segment `msn` (no part asked) or part `part` of it, or anything
    later; an ended playlist answers at once."""
    if position.ended:
        return True
    if part is None:
        return position.last_msn >= msn
    if position.last_msn > msn:
        return True
    return position.last_part is not None and position.last_part >= (msn, part)
