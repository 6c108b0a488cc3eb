"""The output folder on disk: safe folder resolution, atomic writes, playlists, restoring history."""
from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Sequence

import m3u8

from .errors import UnsafeFolderError
from .ladder import Rendition, master_playlist
from .playlist import LiveEdge, SegmentInfo, archive_playlist, live_playlist, vod_playlist
from .segments import PART_FILE, SEGMENT_FILE, FolderHistory

LIVE_PLAYLIST, VOD_PLAYLIST, ARCHIVE_PLAYLIST = "live.m3u8", "vod.m3u8", "archive.m3u8"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_DEPTH = 8


def safe_folder(output_dir: Path, folder: object) -> Path:
    """The absolute folder for what resolve_key returned, or UnsafeFolderError: relative, plain names
    only (no '..', '.', empty parts, backslashes, NUL, absolute paths), and still inside output_dir
    after symlinks are followed."""
    if not isinstance(folder, str) or not folder or len(folder) > 1024:
        raise UnsafeFolderError("folder must be a non-empty string")
    parts = folder.split("/")
    if PurePosixPath(folder).is_absolute() or len(parts) > MAX_DEPTH:
        raise UnsafeFolderError(f"folder {folder!r} is absolute or too deep")
    for part in parts:
        if part in (".", "..") or not _PART.match(part):
            raise UnsafeFolderError(f"folder {folder!r} has an unsafe part {part!r}")
    base = Path(output_dir).resolve()
    target = (base / folder).resolve()
    if not target.is_relative_to(base) or target == base:
        raise UnsafeFolderError(f"folder {folder!r} leaves the output directory")
    return target


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temp file beside `path`, then rename over it: readers see the old or the new file."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_playlists(
    folder: Path,
    history: FolderHistory,
    *,
    window: int,
    target_s: float,
    ended: bool,
    edge: LiveEdge | None = None,
    archive: bool = True,
) -> None:
    """The live playlist (with its low-latency edge, if any), and unless only a part was added, the
    archive one; the VOD playlist once the publisher ended."""
    if archive:
        write_atomic(folder / ARCHIVE_PLAYLIST, archive_playlist(history.segments, configured_s=target_s, ended=ended))
    live = live_playlist(history.segments, window=window, configured_s=target_s, ended=ended, edge=edge)
    write_atomic(folder / LIVE_PLAYLIST, live)
    if ended:
        write_atomic(folder / VOD_PLAYLIST, vod_playlist(history.segments, configured_s=target_s))


def master_write(folder: Path, ladder: Sequence[Rendition]) -> None:
    """The session's master playlist (`live.m3u8`, the URL players already have) naming every rung,
    written once a rung publishes; left alone when it already says the same."""
    text = master_playlist(ladder, playlist=LIVE_PLAYLIST)
    path = folder / LIVE_PLAYLIST
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, text)


def parts_remove(folder: Path, *, keep_from_index: int | None = None) -> None:
    """Delete part files of segments before `keep_from_index` (all of them with None): parts are only
    listed for the last few segments, and the segment file holds the same bytes."""
    for path in folder.iterdir():
        match = PART_FILE.match(path.name)
        if match and (keep_from_index is None or int(match.group(1)) < keep_from_index):
            path.unlink(missing_ok=True)


def load_history(folder: Path) -> FolderHistory:
    """What earlier publishers left in this folder: the archive playlist (every segment so far, also after
    a packager crash), the VOD one and the live one (older folders), numbering kept."""
    found: dict[int, SegmentInfo] = {}
    for name in (ARCHIVE_PLAYLIST, VOD_PLAYLIST, LIVE_PLAYLIST):
        path = folder / name
        if path.is_file():
            for info in _parse(path.read_text(encoding="utf-8")):
                found.setdefault(info.index, info)
    files = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return FolderHistory.restore(found.values(), files)


def _parse(text: str) -> list[SegmentInfo]:
    playlist = m3u8.loads(text)
    result = []
    for offset, segment in enumerate(playlist.segments):
        match = SEGMENT_FILE.match(segment.uri or "")
        if not match:
            continue
        moment = segment.current_program_date_time or datetime.now(timezone.utc)
        result.append(
            SegmentInfo(
                index=int(match.group(1)),
                sequence=(playlist.media_sequence or 0) + offset,
                duration_s=float(segment.duration or 0.0),
                program_date_time=moment,
                discontinuity=bool(segment.discontinuity),
            )
        )
    return result
