"""Post-processing of a stopped recording, one idempotent step at a time on the default queue:

    finalize -> program -> probe -> qc -> thumbnails -> publish

Each step reads and writes the recording's spool folder (raw track files in `tracks/`, results in
`final/`) and records its state in `Recording.progress`, so administrators see where it is and why a
step failed. `program`, `qc` and `thumbnails` are best-effort: if they fail for good the recording is
still published, with the failure explained. `finalize`, `probe` and `publish` are required: if one
fails for good the recording is marked failed, and every file written so far stays in the spool."""
from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from recorder import RecorderError
from recorder.ffmpeg_bin import ffmpeg_default
from recorder.files import file_checksum
from recorder.finalize import track_finalize
from recorder.manifest import (
    Manifest,
    ManifestEvent,
    ManifestGap,
    ManifestParticipant,
    ManifestProgram,
    ManifestTrack,
    manifest_dumps,
    manifest_to_dict,
)
from recorder.probe import media_probe
from recorder.program import program_copy, program_export_mp4, program_segments_select
from recorder.qc import QcThresholds, QcTrackInput, detect_silence, detect_video, qc_evaluate
from recorder.thumbnails import thumbnail_make

from ..models import ChatMessage, EventKind, FileRole, Recording, RecordingFile, RecordingStatus, SessionEvent
from ..selectors import display_name
from .ingest import program_media_folder, session_folder

log = logging.getLogger("classcast.recording")
STEPS = ("finalize", "program", "probe", "qc", "thumbnails", "publish")
BEST_EFFORT = frozenset({"program", "qc", "thumbnails"})
TIMELINE_KINDS = frozenset({
    EventKind.SESSION_STARTED, EventKind.SESSION_ENDED, EventKind.HAND_RAISED, EventKind.HAND_LOWERED,
    EventKind.INVITED, EventKind.ON_STAGE, EventKind.DECLINED, EventKind.STAGE_LEFT, EventKind.REMOVED,
    EventKind.MUTED, EventKind.LAYOUT, EventKind.BROADCAST_LIVE, EventKind.BROADCAST_STOPPED,
    EventKind.RECORDING_INTERRUPTED,
})
STAGE_END_KINDS = (EventKind.STAGE_LEFT, EventKind.REMOVED, EventKind.SESSION_ENDED)
PROGRAM_MP4, PROGRAM_PLAYLIST, MANIFEST, POSTER = "program.mp4", "program/program.m3u8", "manifest.json", "poster.jpg"


class ProcessingPending(RecorderError):
    """A step waits for something still on its way (e.g. the program's last segment); retried."""


def spool(recording: Recording) -> Path:
    return settings.CLASSCAST_RECORDING_SPOOL / recording.folder


def final_path(recording: Recording, name: str) -> Path:
    return spool(recording) / "final" / name


def ffmpeg() -> str:
    return settings.CLASSCAST_FFMPEG or ffmpeg_default()


def offset(recording: Recording, moment: datetime) -> int:
    return round((moment - recording.started_at).total_seconds() * 1000)


# --- progress ----------------------------------------------------------------------------------------

def progress_set(*, recording_id: int, step: str, state: str, error: str = "", attempt: int = 0) -> None:
    with transaction.atomic():
        recording = Recording.objects.select_for_update().get(pk=recording_id)
        progress = dict(recording.progress)
        progress[step] = {"state": state, "at": timezone.now().isoformat(), "error": error, "attempt": attempt}
        recording.progress = progress
        fields = ["progress"]
        if state == "failed" and step not in BEST_EFFORT:
            recording.status = RecordingStatus.FAILED
            recording.error = f"Post-processing failed at '{step}': {error}. The files recorded so far are kept."
            fields += ["status", "error"]
        recording.save(update_fields=fields)


def next_step(step: str) -> str | None:
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def recording_process_step(*, recording_id: int, step: str) -> None:
    """Run one step (raises to be retried); the caller records progress and queues the next."""
    recording = Recording.objects.select_related("classroom", "session").get(pk=recording_id)
    STEP_FUNCTIONS[step](recording)


def recording_reprocess(*, recording_id: int) -> None:
    """Run post-processing again from the start (every step skips what is already done)."""
    from ..tasks import recording_process

    with transaction.atomic():
        recording = Recording.objects.select_for_update().get(pk=recording_id)
        if recording.status not in (RecordingStatus.FAILED, RecordingStatus.PROCESSING):
            return
        recording.status = RecordingStatus.PROCESSING
        recording.error = ""
        recording.progress = {}
        recording.save(update_fields=["status", "error", "progress"])
        transaction.on_commit(lambda: recording_process.delay(recording_id, STEPS[0]))


# --- steps -------------------------------------------------------------------------------------------

def _finalize(recording: Recording) -> None:
    """Remux each raw track file into a seekable one with its duration; a truncated tail is cut."""
    for row in recording.files.filter(role=FileRole.TRACK):
        raw, final = spool(recording) / row.name, final_path(recording, row.name)
        if final.exists() and final.stat().st_mtime >= (raw.stat().st_mtime if raw.exists() else 0):
            continue
        if not raw.exists():
            row.qc = [{"code": "track_missing", "severity": "error", "message": "The recorder's file is missing."}]
            row.save(update_fields=["qc"])
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = track_finalize(src=raw, dst=final)
        except RecorderError as exc:
            row.qc = [{"code": "track_empty", "severity": "error", "message": f"Nothing playable was recorded: {exc}"}]
            row.save(update_fields=["qc"])
            continue
        if row.end_ms is None:  # the job died before closing it: the file says how far it got
            row.end_ms = row.start_ms + result.end_ms
            row.save(update_fields=["end_ms"])


def _program(recording: Recording) -> None:
    """The broadcast's HLS segments within the recording, as a VOD playlist and one MP4 (remuxed)."""
    folder = program_media_folder(
        settings.CLASSCAST_HLS_ROOT / session_folder(classroom_id=recording.classroom_id, session_id=recording.session_id)
    )  # with a ladder: the top rung's folder
    archive = folder / "archive.m3u8" if folder is not None else None
    if archive is None or not archive.exists():
        return  # nothing was broadcast (compositor or OBS) in this session: no program
    text = archive.read_text(encoding="utf-8")
    segments = program_segments_select(playlist_text=text, start=recording.started_at, end=recording.stopped_at)
    if not segments:
        return
    last_end = segments[-1].program_date_time + timedelta(seconds=segments[-1].duration_s)
    still_live = "#EXT-X-ENDLIST" not in text
    waited = (timezone.now() - recording.stopped_at).total_seconds()
    if still_live and last_end < recording.stopped_at - timedelta(seconds=0.5) and waited < 3 * settings.CLASSCAST_HLS_SEGMENT_S + 5:
        raise ProcessingPending("the program's last segment is not written yet")
    copied = program_copy(
        source_folder=folder, segments=segments, dest_folder=final_path(recording, "program"), playlist_name="program.m3u8"
    )
    program_export_mp4(playlist=copied.playlist, out=final_path(recording, PROGRAM_MP4), ffmpeg=ffmpeg())
    start_ms = offset(recording, segments[0].program_date_time)
    end_ms = offset(recording, last_end)
    for name, role in ((PROGRAM_MP4, FileRole.PROGRAM), (PROGRAM_PLAYLIST, FileRole.PROGRAM_PLAYLIST)):
        RecordingFile.objects.update_or_create(
            recording=recording, name=name,
            defaults={"role": role, "kind": "video", "codec": "h264", "start_ms": start_ms, "end_ms": end_ms,
                      "participant_name": "Program"},
        )
    if copied.missing:
        log.warning("program segments missing: %s", copied.missing, extra={"recording_id": recording.pk})


def _probe(recording: Recording) -> None:
    for row in recording.files.filter(role__in=[FileRole.TRACK, FileRole.PROGRAM]):
        path = final_path(recording, row.name)
        if not path.exists():
            continue
        try:
            info = media_probe(path=path)
        except RecorderError as exc:
            row.qc = [{"code": "track_missing", "severity": "error", "message": f"The file cannot be read: {exc}"}]
            row.save(update_fields=["qc"])
            continue
        row.duration_ms = info.duration_ms
        row.frames = info.frames
        row.width, row.height = info.width, info.height
        row.codec = info.codec or row.codec
        row.size, row.sha256 = file_checksum(path=path)
        if row.role == FileRole.TRACK and row.end_ms is None:
            row.end_ms = row.start_ms + (info.duration_ms or 0)
        row.save()


def _qc(recording: Recording) -> None:
    """FFmpeg's own detectors per track, then the rules; warnings go on each file and the recording."""
    thresholds = QcThresholds(
        black_s=settings.CLASSCAST_QC_BLACK_S, frozen_s=settings.CLASSCAST_QC_FROZEN_S,
        silence_s=settings.CLASSCAST_QC_SILENCE_S,
    )
    binary = ffmpeg()
    inputs, rows = [], {}
    for row in recording.files.filter(role=FileRole.TRACK):
        path = final_path(recording, row.name)
        readable = path.exists() and row.duration_ms is not None
        black = frozen = silent = []
        if readable and row.kind == "video" and (row.frames or 0) > 0:
            found = detect_video(path=path, ffmpeg=binary, black_s=thresholds.black_s, frozen_s=thresholds.frozen_s)
            black = found.black
            # a black stretch is also a still one: say it once, as black
            frozen = [f for f in found.frozen if not any(b.start_s <= f.start_s + 0.5 and f.end_s <= b.end_s + 0.5 for b in black)]
        elif readable and row.kind == "audio" and (row.frames or 0) > 0:
            silent = detect_silence(path=path, ffmpeg=binary, min_s=thresholds.silence_s)
        inputs.append(QcTrackInput(
            track_id=row.name, kind=row.kind, expected_ms=_expected_ms(recording, row),
            duration_ms=row.duration_ms if readable else None, frames=row.frames or 0,
            black=black, frozen=frozen, silent=silent,
        ))
        rows[row.name] = row
    warnings = qc_evaluate(tracks=inputs, thresholds=thresholds)
    if not rows and recording.session.stage.exists():
        warnings_all = [{"code": "no_tracks", "track": "", "severity": "error",
                         "message": "No stage track was recorded.", "start_ms": None, "end_ms": None}]
    else:
        warnings_all = []
    for row in rows.values():
        row.qc = [_warning(w) for w in warnings if w.track_id == row.name]
        row.save(update_fields=["qc"])
    recording.qc = warnings_all + [_warning(w) for w in warnings]
    recording.save(update_fields=["qc"])


def _warning(w: Any) -> dict[str, Any]:
    return {"code": w.code, "track": w.track_id, "severity": w.severity, "message": w.message,
            "start_ms": w.start_ms, "end_ms": w.end_ms}


def thumbnail_name(track_name: str) -> str:
    """Where a video track's thumbnail lives in the recording's folder."""
    return f"thumbs/{Path(track_name).stem}.jpg"


def _expected_ms(recording: Recording, row: RecordingFile) -> int:
    """How long this file should last: from its start until its participant left the stage (per the
    event log), the session ended, or the recording stopped."""
    start = recording.started_at + timedelta(milliseconds=row.start_ms)
    end = recording.stopped_at
    left = (
        SessionEvent.objects.filter(session=recording.session, created_at__gt=start, created_at__lte=end)
        .filter(Q(kind__in=STAGE_END_KINDS, subject_id=row.user_id) | Q(kind=EventKind.SESSION_ENDED))
        .order_by("created_at")
        .first()
    )
    if left is not None:
        end = left.created_at
    for gap in recording.gaps:  # a file stops at a gap; the next run starts a new one
        if gap.get("start_ms") is not None and row.start_ms < gap["start_ms"] < offset(recording, end):
            end = recording.started_at + timedelta(milliseconds=gap["start_ms"])
            break
    return max(0, offset(recording, end) - row.start_ms)


def _thumbnails(recording: Recording) -> None:
    binary = ffmpeg()
    poster_source = None
    for row in recording.files.filter(role__in=[FileRole.TRACK, FileRole.PROGRAM], kind="video"):
        path = final_path(recording, row.name)
        if not path.exists() or not row.frames:
            continue
        at_s = min(10.0, (row.duration_ms or 0) / 2000)
        if row.role == FileRole.PROGRAM or poster_source is None:
            poster_source = (path, at_s, row.role == FileRole.PROGRAM)
        if row.role == FileRole.TRACK:
            name = thumbnail_name(row.name)
            thumbnail_make(video=path, out=final_path(recording, name), at_s=at_s, ffmpeg=binary)
            RecordingFile.objects.update_or_create(
                recording=recording, name=name,
                defaults={"role": FileRole.THUMBNAIL, "user_id": row.user_id, "participant_name": row.participant_name},
            )
    if poster_source is not None:
        thumbnail_make(video=poster_source[0], out=final_path(recording, POSTER), at_s=poster_source[1], width=640, ffmpeg=binary)
        RecordingFile.objects.update_or_create(recording=recording, name=POSTER, defaults={"role": FileRole.POSTER})


def _publish(recording: Recording) -> None:
    """Write the manifest, copy every final file to the recordings storage, set the retention date."""
    manifest = manifest_build(recording=recording)
    path = final_path(recording, MANIFEST)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_dumps(manifest), encoding="utf-8")
    size, sha = file_checksum(path=path)
    RecordingFile.objects.update_or_create(
        recording=recording, name=MANIFEST, defaults={"role": FileRole.MANIFEST, "size": size, "sha256": sha}
    )
    store = storages["recordings"]
    final_root = spool(recording) / "final"
    for file in sorted(p for p in final_root.rglob("*") if p.is_file()):
        name = f"{recording.folder}/{file.relative_to(final_root).as_posix()}"
        if store.exists(name):
            store.delete(name)
        with file.open("rb") as handle:
            saved = store.save(name, File(handle))
        if saved != name:
            raise RecorderError(f"the storage renamed {name} to {saved}")
    RecordingFile.objects.filter(recording=recording).update(stored=True)
    for row in recording.files.filter(size__isnull=True):
        if final_path(recording, row.name).exists():
            row.size, row.sha256 = file_checksum(path=final_path(recording, row.name))
            row.save(update_fields=["size", "sha256"])
    days = recording.classroom.recording_retention_days
    if days is None:
        days = settings.CLASSCAST_RECORDING_RETENTION_DAYS
    now = timezone.now()
    recording.manifest = manifest_to_dict(manifest)
    recording.duration_ms = offset(recording, recording.stopped_at)
    recording.size_bytes = sum(f.size or 0 for f in recording.files.all())
    recording.status = RecordingStatus.PUBLISHED
    recording.published_at = now
    recording.expires_at = now + timedelta(days=days) if days else None
    recording.save(update_fields=["manifest", "duration_ms", "size_bytes", "status", "published_at", "expires_at"])
    shutil.rmtree(spool(recording), ignore_errors=True)  # everything is in storage now
    log.info("recording published", extra={"recording_id": recording.pk})


def manifest_build(*, recording: Recording) -> Manifest:
    files = list(recording.files.all())
    tracks = tuple(
        ManifestTrack(
            id=Path(f.name).stem, participant=ManifestParticipant(id=f.user_id or 0, name=f.participant_name, role=f.participant_role),
            kind=f.kind, codec=f.codec, file=f.name, start_ms=f.start_ms, end_ms=max(f.end_ms or f.start_ms, f.start_ms),
            first_media_ms=f.first_media_ms, duration_ms=f.duration_ms, frames=f.frames, size=f.size, sha256=f.sha256 or None,
            width=f.width, height=f.height,
        )
        for f in files if f.role == FileRole.TRACK
    )
    mp4 = next((f for f in files if f.role == FileRole.PROGRAM), None)
    program = None
    if mp4 is not None:
        segments = len([p for p in final_path(recording, "program").glob("*.ts")])
        program = ManifestProgram(
            playlist=PROGRAM_PLAYLIST, mp4=mp4.name, start_ms=mp4.start_ms, end_ms=mp4.end_ms or mp4.start_ms,
            segments=segments, size=mp4.size, sha256=mp4.sha256 or None,
        )
    return Manifest(
        recording_id=recording.pk, class_id=recording.classroom_id, class_title=recording.classroom.title,
        session_id=recording.session_id, started_at=recording.started_at, stopped_at=recording.stopped_at,
        complete=recording.complete, incomplete_reasons=tuple(recording.problems), tracks=tracks, program=program,
        events=tuple(timeline_events(recording=recording)),
        gaps=tuple(ManifestGap(start_ms=g["start_ms"], end_ms=g["end_ms"] if g.get("end_ms") is not None else g["start_ms"],
                               reason=g["reason"]) for g in recording.gaps),
    )


def timeline_events(*, recording: Recording) -> list[ManifestEvent]:
    """The session's event log (stage, hands, chat, layout...) within the recording, as offsets."""
    window = {"created_at__gte": recording.started_at, "created_at__lte": recording.stopped_at}
    out = []
    for event in SessionEvent.objects.filter(session=recording.session, kind__in=TIMELINE_KINDS, **window).select_related("actor", "subject"):
        who = event.subject or event.actor
        data = dict(event.data)
        if event.subject_id and event.actor_id and event.subject_id != event.actor_id:
            data["by"] = {"id": event.actor_id, "name": display_name(event.actor)}
        out.append(ManifestEvent(
            offset_ms=offset(recording, event.created_at), kind=event.kind,
            actor=ManifestParticipant(id=who.pk, name=display_name(who), role="") if who else None, data=data,
        ))
    for message in ChatMessage.objects.filter(session=recording.session, **window).select_related("author"):
        out.append(ManifestEvent(
            offset_ms=offset(recording, message.created_at), kind=EventKind.CHAT,
            actor=ManifestParticipant(id=message.author_id, name=display_name(message.author), role=""),
            data={"text": message.text},
        ))
    return sorted(out, key=lambda e: e.offset_ms)


STEP_FUNCTIONS: dict[str, Callable[[Recording], None]] = {
    "finalize": _finalize, "program": _program, "probe": _probe, "qc": _qc, "thumbnails": _thumbnails,
    "publish": _publish,
}
