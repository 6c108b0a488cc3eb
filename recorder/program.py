"""The program recording: the broadcast's own HLS segments kept as a VOD playlist, and one MP4 of them.

The HLS packager already wrote what viewers saw (`seg-<n>.ts` + `vod.m3u8`, a program date time per
segment); keeping those segments loses nothing and costs no encoding. Selecting and rendering playlists
is pure; copying segments and exporting the MP4 (a remux by the ffmpeg binary) are the I/O edges.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import ffmpeg as ffmpeg_python
import m3u8

from . import RecorderError
from .ffmpeg_bin import FfmpegError, ffmpeg_run

# A segment URI we copy must be a plain file name in the packager's folder: no path, no URL.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# ffmpeg corrects a jump in timestamps of more than this many seconds (its default is 10 s): a
# publisher that came back after a pause must follow the previous one, not leave a hole in the MP4.
_DISCONTINUITY_THRESHOLD_S = 1.0


class ProgramError(RecorderError):
    """The program recording cannot be made from this playlist or these segments."""


class UnsafeSegmentUriError(ProgramError):
    """A playlist names a segment by a path or URL instead of a plain file name."""


class ProgramExportError(FfmpegError):
    """ffmpeg could not remux the program playlist into an MP4."""


@dataclass(frozen=True)
class ProgramSegment:
    uri: str
    duration_s: float
    program_date_time: datetime  # UTC wall clock of the segment's first frame
    discontinuity: bool = False  # the media timeline restarts here (a publisher reconnected)

    @property
    def end(self) -> datetime:
        return self.program_date_time + timedelta(seconds=self.duration_s)


@dataclass(frozen=True)
class ProgramCopyResult:
    playlist: Path
    copied: int  # segments now in the destination folder (linked, copied, or already there)
    missing: tuple[str, ...]  # segment URIs whose file was not found; left out of the playlist


# --- pure ---------------------------------------------------------------------------------------------------

def program_segments_select(*, playlist_text: str, start: datetime, end: datetime) -> list[ProgramSegment]:
    """The segments of a (live, event or VOD) playlist overlapping [start, end), in playlist order.

    A segment left out between two kept ones breaks the media timeline, so the next kept one is marked
    as a discontinuity; the first kept one never is (nothing precedes it).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    playlist = m3u8.loads(playlist_text)
    kept: list[ProgramSegment] = []
    skipped_since_kept = False
    for segment in playlist.segments:
        current = _segment(segment)
        if current.program_date_time < end and current.end > start:
            broken = bool(kept) and (current.discontinuity or skipped_since_kept)
            kept.append(replace(current, discontinuity=broken))
            skipped_since_kept = False
        else:
            skipped_since_kept = bool(kept)
    return kept


def _segment(segment: m3u8.Segment) -> ProgramSegment:
    moment = segment.current_program_date_time
    if moment is None:
        raise ProgramError(f"segment {segment.uri!r} has no EXT-X-PROGRAM-DATE-TIME")
    if segment.duration is None or segment.uri is None:
        raise ProgramError(f"segment {segment.uri!r} has no EXTINF duration or URI")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # RFC 8216 dates carry an offset; be lenient
    return ProgramSegment(
        uri=segment.uri,
        duration_s=float(segment.duration),
        program_date_time=moment.astimezone(timezone.utc),
        discontinuity=bool(segment.discontinuity),
    )


def program_playlist_render(*, segments: Sequence[ProgramSegment]) -> str:
    """A VOD playlist (RFC 8216, version 3) of `segments`, each with its program date time."""
    longest = max((round(s.duration_s, 3) for s in segments), default=1.0)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",  # every packager segment starts on a keyframe
    ]
    for index, segment in enumerate(segments):
        if segment.discontinuity and index > 0:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_format_datetime(segment.program_date_time)}")
        lines.append(f"#EXTINF:{segment.duration_s:.3f},")
        lines.append(segment.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def program_window(*, segments: Sequence[ProgramSegment]) -> tuple[datetime, datetime]:
    """Wall-clock start of the first segment and end of the last one."""
    if not segments:
        raise ProgramError("the program has no segments")
    return segments[0].program_date_time, segments[-1].end


def _format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- I/O ----------------------------------------------------------------------------------------------------

def program_copy(
    *,
    source_folder: Path,
    segments: Sequence[ProgramSegment],
    dest_folder: Path,
    playlist_name: str = "program.m3u8",
) -> ProgramCopyResult:
    """Keep `segments` in `dest_folder` (hard links when possible: no bytes copied) with their playlist.

    Idempotent: a segment already there is left alone (segments never change once written). A missing
    segment is left out of the playlist, and the one after it marked as a discontinuity.
    """
    for name in [playlist_name, *(s.uri for s in segments)]:
        if not _PLAIN_NAME.match(name):
            raise UnsafeSegmentUriError(f"not a plain file name: {name!r}")
    dest_folder.mkdir(parents=True, exist_ok=True)
    present: list[ProgramSegment] = []
    missing: list[str] = []
    gap = False  # a segment was left out since the last one kept
    for segment in segments:
        if _keep_file(source_folder / segment.uri, dest_folder / segment.uri):
            present.append(replace(segment, discontinuity=bool(present) and (segment.discontinuity or gap)))
            gap = False
        else:
            missing.append(segment.uri)
            gap = bool(present)
    playlist = dest_folder / playlist_name
    _write_atomic(playlist, program_playlist_render(segments=present))
    return ProgramCopyResult(playlist=playlist, copied=len(present), missing=tuple(missing))


def _keep_file(source: Path, dest: Path) -> bool:
    """Link (else copy) `source` to `dest` through a temp name; False when the source is missing."""
    if not source.is_file():
        return False
    if dest.is_file() and (_same_file(source, dest) or dest.stat().st_size == source.stat().st_size):
        return True
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed there
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except FileNotFoundError:  # the source went away meanwhile
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def program_export_mp4(*, playlist: Path, out: Path, ffmpeg: str) -> None:
    """One MP4 of the program, remuxed without re-encoding, playable from the first byte (faststart).

    ffmpeg's hls demuxer reads the segments in order; where a publisher reconnected, timestamps jump
    and ffmpeg's discontinuity correction (threshold lowered to 1 s) joins the parts end to end.
    """
    if not playlist.is_file():
        raise ProgramExportError(f"no program playlist at {playlist}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    stream = (
        ffmpeg_python.input(str(playlist), format="hls", protocol_whitelist="file")
        .output(
            str(tmp),
            format="mp4",
            c="copy",
            **{"bsf:a": "aac_adtstoasc"},  # ADTS (MPEG-TS) to the AudioSpecificConfig MP4 wants
            movflags="+faststart",
        )
        .global_args("-dts_delta_threshold", str(_DISCONTINUITY_THRESHOLD_S))
    )
    try:
        ffmpeg_run(stream, ffmpeg=ffmpeg, error=ProgramExportError, what=f"cannot export {playlist.name} to MP4")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
