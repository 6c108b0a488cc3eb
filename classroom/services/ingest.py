"""What the HLS packager asks the app: which folder a stream key publishes into; and what it tells."""
from __future__ import annotations

import logging
import os
import stat as stat_mode
from pathlib import Path

from django.conf import settings

from hls_packager.ladder import master_first_variant

from .. import metrics
from ..hls_blocking import regular_file_read
from ..models import Classroom, LiveSession, SessionStatus

log = logging.getLogger("classcast.ingest")


def session_folder(*, classroom_id: int, session_id: int) -> str:
    """A session's HLS folder under CLASSCAST_HLS_ROOT: built from ids, never from user input."""
    return f"class-{int(classroom_id)}/session-{int(session_id)}"


def ingest_folder_for_key(app: str, key: str) -> str | None:
    """The folder a publisher with this key writes to, or None (refused): the key must be a class's
    current stream key and the class must be live."""
    if app != "live" or not key:
        return None
    classroom = Classroom.objects.filter(stream_key=key).only("pk").first()
    if classroom is None:
        return None
    session = LiveSession.objects.filter(classroom=classroom, status=SessionStatus.LIVE).only("pk").first()
    if session is None:
        return None
    return session_folder(classroom_id=classroom.pk, session_id=session.pk)


def hls_folder_path(*, classroom_id: int) -> Path | None:
    """The newest session folder of a class that has HLS output (the live one first)."""
    sessions = LiveSession.objects.filter(classroom_id=classroom_id).order_by("-started_at", "-id")
    live = [s for s in sessions if s.status == SessionStatus.LIVE]
    for session in live + [s for s in sessions[:5] if s.status != SessionStatus.LIVE]:
        folder = settings.CLASSCAST_HLS_ROOT / session_folder(classroom_id=classroom_id, session_id=session.pk)
        if (folder / "live.m3u8").exists():
            return folder
    return None


def hls_rung_folder(folder: Path, rung: str) -> Path | None:
    """A ladder rung's folder inside the session folder: a real directory of its own, never a symlink
    (which could lead anywhere on the disk); None otherwise."""
    path = folder / rung
    try:
        return path if stat_mode.S_ISDIR(os.lstat(path).st_mode) else None
    except OSError:
        return None


def hls_text_read(path: Path) -> str | None:
    """A playlist's text if `path` is a regular file (not a symlink); None otherwise."""
    try:
        return regular_file_read(path).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def program_media_folder(folder: Path) -> Path | None:
    """Where a session's program segments are: the session folder for a single stream (OBS, a one-rung
    ladder), the top rung's folder when its `live.m3u8` is a ladder's master playlist; None when that
    rung is not a real directory of the session's own."""
    text = hls_text_read(folder / "live.m3u8")
    top = master_first_variant(text) if text is not None else None
    return hls_rung_folder(folder, top) if top else folder


class IngestEvents:
    """The packager's callbacks: logs and metrics (they run on its event loop: no database here)."""

    def on_publish_start(self, folder: str) -> None:
        metrics.INGEST_PUBLISHERS.inc()
        log.info("publisher started", extra={"folder": folder})

    def on_publish_end(self, folder: str, reason: str) -> None:
        metrics.INGEST_PUBLISHERS.dec()
        log.info("publisher ended", extra={"folder": folder, "reason": reason})

    def on_refused(self, app: str, key: str, reason: str) -> None:
        metrics.INGEST_REFUSED.labels(reason=reason).inc()
        log.warning("publisher refused", extra={"app": app[:40], "reason": reason})

    def on_connection_refused(self, address: str, reason: str) -> None:
        """A connection closed before an accepted publish: too many from its address, replaced in the
        pending pool, no publish in time, or more bytes than a publisher sends before publish."""
        metrics.INGEST_REFUSED.labels(reason=reason).inc()
        log.warning("RTMP connection refused", extra={"address": address, "reason": reason})

    def on_segment(self, folder: str, segment_name: str, duration_s: float) -> None:
        metrics.INGEST_SEGMENTS.inc()
        metrics.INGEST_SEGMENT_SECONDS.observe(duration_s)


def ingest_events() -> IngestEvents:
    return IngestEvents()
