"""Recording a session: the instructor's start/stop, and the recorder job's claims and reports.

Like a broadcast, the recorder is a Celery job on the `media` queue whose row is its status, heartbeat
and control channel. A recording is never silently lost: a job whose worker dies is queued again by the
watchdog and carries on into new files; the time nobody recorded becomes a gap with a reason, and the
recording is marked incomplete. When it stops, post-processing runs on the default queue."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import InvalidState, NotAllowed
from ..models import (
    ACTIVE_RECORDING_STATES,
    Classroom,
    EventKind,
    FileRole,
    LiveSession,
    Recording,
    RecordingFile,
    RecordingStatus,
)
from ..permissions import Actor, can_record
from .events import event_record
from .sessions import session_require_live

log = logging.getLogger("classcast.recording")
MAX_ATTEMPTS = 20  # a recording whose job keeps dying gives up and keeps what it has


def recording_active(*, session_id: int) -> Recording | None:
    return Recording.objects.filter(session_id=session_id, status__in=ACTIVE_RECORDING_STATES).first()


def offset_ms(recording: Recording, moment: datetime) -> int:
    start = recording.started_at or recording.created_at
    return max(0, round((moment - start).total_seconds() * 1000))


def _enqueue_job(recording_id: int) -> None:
    from ..tasks import recording_run  # the task module imports services; import late to keep one direction

    transaction.on_commit(lambda: recording_run.delay(recording_id))


def _enqueue_processing(recording_id: int) -> None:
    from ..tasks import recording_process

    transaction.on_commit(lambda: recording_process.delay(recording_id, "finalize"))


# --- the instructor's side ---------------------------------------------------------------------------

@transaction.atomic
def recording_start(*, classroom_id: int, actor: Actor | None, auto: bool = False) -> Recording:
    """Start recording the live session (`actor` None: the class's auto-record setting)."""
    if actor is not None and not can_record(actor):
        raise NotAllowed("only the class instructor can record the class")
    session = session_require_live(classroom_id=classroom_id)
    return _start(session, requested_by=actor.user_id if actor else None, auto=auto)


def _start(session: LiveSession, *, requested_by: int | None, auto: bool) -> Recording:
    if recording_active(session_id=session.pk) is not None:
        raise InvalidState("the class is already being recorded")
    try:
        with transaction.atomic():
            recording = Recording.objects.create(
                classroom_id=session.classroom_id, session=session, requested_by_id=requested_by, auto=auto
            )
    except IntegrityError:  # pressed twice, from two tabs
        raise InvalidState("the class is already being recorded") from None
    event_record(session=session, kind=EventKind.RECORDING_STARTED, actor_id=requested_by, data={"id": recording.pk})
    _enqueue_job(recording.pk)
    return recording


def recording_auto_start(*, session: LiveSession) -> Recording | None:
    """Called when a session starts: classes set to auto-record start recording at once."""
    if not session.classroom.auto_record:
        return None
    return _start(session, requested_by=None, auto=True)


@transaction.atomic
def recording_stop(*, classroom_id: int, actor: Actor | None, reason: str = "stopped") -> Recording:
    if actor is not None and not can_record(actor):
        raise NotAllowed("only the class instructor can stop the recording")
    session = session_require_live(classroom_id=classroom_id)
    recording = recording_active(session_id=session.pk)
    if recording is None:
        raise InvalidState("the class is not being recorded")
    recording_stop_request(recording=recording, actor_id=actor.user_id if actor else None, reason=reason)
    return recording


def recording_stop_request(*, recording: Recording, actor_id: int | None, reason: str) -> None:
    """Ask the job to stop; if no job is alive to hear it, the recording is closed here."""
    recording = Recording.objects.select_for_update().get(pk=recording.pk)
    recording.stop_requested = True
    recording.save(update_fields=["stop_requested"])
    if not _alive(recording):
        _close(recording, reason="no recorder job was running when the recording stopped")
    event_record(
        session=recording.session, kind=EventKind.RECORDING_STOPPED, actor_id=actor_id,
        data={"id": recording.pk, "reason": reason},
    )


def recordings_session_ended(*, session: LiveSession) -> None:
    """The session ended: its recording stops (the job sees the session end on its next heartbeat)."""
    recording = recording_active(session_id=session.pk)
    if recording is not None:
        recording_stop_request(recording=recording, actor_id=None, reason="the session ended")


def _close(recording: Recording, *, reason: str) -> None:
    """Stop recording without a job to do it (it died, or never ran): hand over to post-processing."""
    now = timezone.now()
    if recording.started_at is None:
        recording.problems = [*recording.problems, f"Nothing was recorded: {reason}."]
        recording.started_at = recording.created_at
    _gap_close(recording, now)
    recording.status = RecordingStatus.PROCESSING
    recording.stopped_at = now
    recording.worker = ""
    recording.save(update_fields=["problems", "started_at", "gaps", "status", "stopped_at", "worker"])
    _enqueue_processing(recording.pk)


# --- the recorder job's side ---------------------------------------------------------------------------

def _alive(recording: Recording) -> bool:
    stale = timezone.now() - timedelta(seconds=settings.CLASSCAST_RECORDING_STALE_S)
    return bool(recording.worker) and recording.heartbeat_at is not None and recording.heartbeat_at >= stale


def _gap_close(recording: Recording, now: datetime) -> None:
    gaps = [dict(g) for g in recording.gaps]
    if gaps and gaps[-1].get("end_ms") is None:
        gaps[-1]["end_ms"] = offset_ms(recording, now)
    recording.gaps = gaps


@transaction.atomic
def recording_claim(*, recording_id: int, worker: str) -> Recording | None:
    """Take the job for this worker, or refuse it (not wanted any more, or it runs elsewhere)."""
    recording = Recording.objects.select_for_update().select_related("session").filter(pk=recording_id).first()
    if recording is None or recording.status not in ACTIVE_RECORDING_STATES:
        return None
    if _alive(recording) and recording.worker != worker:
        return None  # a duplicate delivery while the job runs elsewhere
    if recording.stop_requested or recording.session.status != "live":
        _close(recording, reason="the recording was stopped before its job started")
        return None
    now = timezone.now()
    recording.started_at = recording.started_at or now
    _gap_close(recording, now)
    recording.status = RecordingStatus.STARTING
    recording.worker = worker
    recording.attempts += 1
    recording.heartbeat_at = now
    recording.save(update_fields=["started_at", "gaps", "status", "worker", "attempts", "heartbeat_at"])
    return recording


@transaction.atomic
def recording_heartbeat(
    *, recording_id: int, worker: str, stats: dict[str, Any], joined: bool, files: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Report stats and (when given) the files written so far; returns whether the job should stop."""
    recording = Recording.objects.select_for_update().select_related("session").get(pk=recording_id)
    if recording.worker != worker:
        return {"stop": True, "reason": "taken over by another worker"}
    if files is not None:
        recording_files_report(recording=recording, files=files)
    recording.heartbeat_at = timezone.now()
    recording.stats = stats
    fields = ["heartbeat_at", "stats"]
    became_live = joined and recording.status == RecordingStatus.STARTING
    if became_live:
        recording.status = RecordingStatus.RECORDING
        fields.append("status")
    recording.save(update_fields=fields)
    if became_live:  # the indicator turns from "starting" to recording, on every page
        event_record(session=recording.session, kind=EventKind.RECORDING_LIVE, data={"id": recording.pk})
    ended = recording.session.status != "live"
    return {"stop": recording.stop_requested or ended, "reason": "session ended" if ended else "stop requested"}


def recording_files_report(*, recording: Recording, files: list[dict[str, Any]]) -> None:
    """Upsert the job's track files by name; the job reports a file as soon as it opens it."""
    known = {f.name: f for f in recording.files.filter(name__in=[f["name"] for f in files])}
    for info in files:
        row = known.get(info["name"]) or RecordingFile(recording=recording, name=info["name"], role=FileRole.TRACK)
        wanted = {
            "kind": info["kind"], "codec": info["codec"], "user_id": info.get("user_id"),
            "participant_name": info.get("participant_name", "")[:200],
            "participant_role": info.get("participant_role", "")[:16], "start_ms": info["start_ms"],
            "first_media_ms": info.get("first_media_ms"), "end_ms": info.get("end_ms"), "frames": info.get("frames"),
        }
        if row.pk is not None and all(getattr(row, k) == v for k, v in wanted.items()):
            continue  # reported every heartbeat: write only what changed
        for key, value in wanted.items():
            setattr(row, key, value)
        row.save()


@transaction.atomic
def recording_finish(*, recording_id: int, worker: str, files: list[dict[str, Any]], error: str = "") -> None:
    """The job ended. Stopped on purpose: post-processing starts. Broke: queued again, the gap noted."""
    recording = Recording.objects.select_for_update().select_related("session").get(pk=recording_id)
    if recording.worker != worker or recording.status not in ACTIVE_RECORDING_STATES:
        return
    recording_files_report(recording=recording, files=files)
    wanted = not recording.stop_requested and recording.session.status == "live"
    if error and wanted and recording.attempts < MAX_ATTEMPTS:
        _interrupt(recording, reason=f"the recorder failed ({error})")
        return
    if error:
        recording.problems = [*recording.problems, f"The recorder failed and stopped: {error}"]
    _close(recording, reason=error or "stopped")


def _interrupt(recording: Recording, *, reason: str) -> None:
    """The job is gone while the recording is wanted: note the gap and queue the job again."""
    since = recording.heartbeat_at or timezone.now()
    at = offset_ms(recording, since)
    recording.gaps = [*recording.gaps, {"start_ms": at, "end_ms": None, "reason": reason}]
    recording.problems = [
        *recording.problems,
        f"Recording interrupted at {at // 60000}:{at // 1000 % 60:02d}: {reason}; it resumed in new files when a worker took it up again.",
    ]
    recording.status = RecordingStatus.RESTARTING
    recording.worker = ""
    recording.heartbeat_at = timezone.now()  # one restart per stale period, not one per sweep
    recording.save(update_fields=["gaps", "problems", "status", "worker", "heartbeat_at"])
    event_record(session=recording.session, kind=EventKind.RECORDING_INTERRUPTED, data={"id": recording.pk, "reason": reason})
    log.warning("recording job lost; queued again", extra={"recording_id": recording.pk})
    _enqueue_job(recording.pk)


@transaction.atomic
def recordings_watchdog() -> list[int]:
    """Jobs whose heartbeat stopped: queued again while the recording is wanted, else closed."""
    stale = timezone.now() - timedelta(seconds=settings.CLASSCAST_RECORDING_STALE_S)
    touched = []
    for recording in Recording.objects.select_for_update(skip_locked=True).select_related("session").filter(
        status__in=ACTIVE_RECORDING_STATES, heartbeat_at__lt=stale
    ):
        if recording.stop_requested or recording.session.status != "live":
            if recording.status != RecordingStatus.RESTARTING:
                _gap_start(recording, reason="the recorder stopped unexpectedly before the recording ended")
            _close(recording, reason="the recorder job died")
        else:
            _interrupt(recording, reason="the recording worker stopped unexpectedly")
        touched.append(recording.pk)
    return touched


def _gap_start(recording: Recording, *, reason: str) -> None:
    at = offset_ms(recording, recording.heartbeat_at or timezone.now())
    recording.gaps = [*recording.gaps, {"start_ms": at, "end_ms": None, "reason": reason}]
    recording.problems = [*recording.problems, f"Recording cut short at {at // 60000}:{at // 1000 % 60:02d}: {reason}."]


@transaction.atomic
def classroom_recording_settings_set(
    *, classroom_id: int, actor: Actor, auto_record: bool, retention_days: int | None
) -> None:
    """The class's recording policy: record every session from its start, and how long to keep
    recordings (None: the site default). Applies to recordings published from now on."""
    if not can_record(actor):
        raise NotAllowed("only the class instructor sets the class's recording policy")
    if retention_days is not None and not 1 <= retention_days <= 3650:
        raise InvalidState("keep recordings between 1 and 3650 days, or leave it empty for the site default")
    Classroom.objects.filter(pk=classroom_id).update(auto_record=auto_record, recording_retention_days=retention_days)
    log.info("recording policy set", extra={"class_id": classroom_id, "user_id": actor.user_id})
