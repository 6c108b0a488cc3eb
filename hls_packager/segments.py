"""Segment bookkeeping, pure: where to cut, and a folder's history of segments across publishers."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from .playlist import PartInfo, SegmentInfo

SEGMENT_FILE = re.compile(r"^seg-(\d+)\.ts$")
PART_FILE = re.compile(r"^seg-(\d+)\.part(\d+)\.ts$")


@dataclass
class SegmentCutter:
    """Decides cuts on media time. A segment starts at a keyframe and is cut at the first keyframe at or
    after start + target (with video; audio-only streams cut on any packet)."""

    target_s: float
    start_s: float | None = None

    # A keyframe this close to the target still cuts: a segment that began a frame late (the first one
    # of a publisher, or after a reconnect) would otherwise wait a whole GOP more and come out twice
    # as long; FLV's whole-millisecond clock also lands 2 s of 30 fps video on 1999.999.. ms.
    early_cut_fraction: float = 0.9

    def should_cut(self, t_s: float, *, keyframe: bool, on_grid: bool = False) -> bool:
        if self.start_s is None or not keyframe:
            return False
        if on_grid:
            # Audio only (every packet may cut): at the first packet on or after the next multiple of the
            # target on the media clock, where a ladder's video rungs cut (the program's keyframes are on
            # those ticks), and with no drift from one segment to the next.
            boundary = (math.floor(self.start_s / self.target_s + 1e-6) + 1) * self.target_s
            return t_s >= boundary - 0.001
        return t_s - self.start_s >= self.target_s * self.early_cut_fraction - 0.001

    def begin(self, t_s: float) -> None:
        self.start_s = t_s


@dataclass
class FolderHistory:
    """Every segment of one output folder, across publisher reconnects (numbering continues)."""

    segments: list[SegmentInfo] = field(default_factory=list)
    next_index: int = 0
    _pending_discontinuity: bool = False

    @classmethod
    def restore(cls, segments: Iterable[SegmentInfo], existing_files: Iterable[str] = ()) -> "FolderHistory":
        """From playlists already on disk (a packager restart); never reuses a seg-<n>.ts name found."""
        ordered = sorted({s.index: s for s in segments}.values(), key=lambda s: s.sequence)
        # Part files count too: a packager killed mid-segment leaves parts of a segment never listed, and
        # a CDN may hold them as immutable; their numbers are never handed out again.
        used = [int(m.group(1)) for name in existing_files if (m := SEGMENT_FILE.match(name) or PART_FILE.match(name))]
        next_index = max([s.index + 1 for s in ordered] + [n + 1 for n in used] + [0])
        return cls(segments=ordered, next_index=next_index)

    def begin_publish(self) -> None:
        """A publisher starts: if segments exist already, the next one follows a discontinuity."""
        self._pending_discontinuity = bool(self.segments) or self.next_index > 0

    @property
    def pending_discontinuity(self) -> bool:
        return self._pending_discontinuity

    def take_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    def add(
        self, index: int, duration_s: float, program_date_time: datetime, parts: tuple[PartInfo, ...] = ()
    ) -> SegmentInfo:
        sequence = self.segments[-1].sequence + 1 if self.segments else 0
        info = SegmentInfo(index, sequence, duration_s, program_date_time, self._pending_discontinuity, parts)
        self._pending_discontinuity = False
        self.segments.append(info)
        return info


@dataclass
class PartCutter:
    """Decides where partial segments end, on media time. A part ends before the packet that would make
    it longer than the part target, so every part stays within PART-TARGET (RFC 8216bis 4.4.4.9) and,
    at a steady frame rate, all but a segment's last are the same length (10 frames of 30 fps at 0.334)."""

    target_s: float
    start_s: float = 0.0
    last_s: float | None = None  # the previous packet of the pacing stream

    def begin(self, t_s: float) -> None:
        self.start_s = self.last_s = t_s

    def should_cut(self, t_s: float) -> bool:
        """Called for each packet of the stream that paces parts (video, or audio when there is none)."""
        step = t_s - self.last_s if self.last_s is not None and 0 < t_s - self.last_s < 1 else 0.0
        self.last_s = t_s
        # With this packet and the next one's worth of media, the part would outgrow the target.
        return t_s > self.start_s and t_s + step - self.start_s > self.target_s + 0.0005


def wall_clock(anchor: datetime, anchor_media_s: float, media_s: float) -> datetime:
    """Program date-time of media time `media_s`, from one (wall, media) anchor per publish."""
    return anchor + timedelta(seconds=media_s - anchor_media_s)
