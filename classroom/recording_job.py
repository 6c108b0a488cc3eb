"""The recorder job, run by the `recording_run` Celery task (media queue): joins the class as a hidden
subscriber with a service token and writes every stage track to its own file in the spool, while
keeping the job's row up to date (heartbeat, stats, files) and stopping when the row says so.
Muxing runs in the writers' threads, off this event loop."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from recorder.stage_recorder import RecorderConfig, StageRecorder

from .egress import jsonable, signaling_config
from .models import Recording
from .services.broadcast import worker_name
from .services.recordings import recording_claim, recording_finish, recording_heartbeat

log = logging.getLogger("classcast.recording")
GROWING = ("frames", "bytes")  # change every heartbeat; written at most every `every_s`


class FilesReport:
    """Decides when a heartbeat carries the track files. A file opened or closed goes at once (a job
    that dies has still told the database what it wrote); counters that merely grow go every `every_s`,
    since each reported row is an UPDATE and an fsync per second per track on the embedded SQLite."""

    def __init__(self, *, every_s: float) -> None:
        self.every_s = every_s
        self._shape: list[dict[str, Any]] | None = None
        self._sent_at = float("-inf")

    def due(self, files: list[dict[str, Any]], *, now: float) -> bool:
        shape = [{k: v for k, v in f.items() if k not in GROWING} for f in files]
        if shape == self._shape and now - self._sent_at < self.every_s:
            return False
        self._shape, self._sent_at = shape, now
        return True


def recording_job_run(*, recording_id: int) -> str:
    worker = worker_name()
    recording = recording_claim(recording_id=recording_id, worker=worker)
    if recording is None:
        return "not claimed"
    config = RecorderConfig(
        folder=settings.CLASSCAST_RECORDING_SPOOL / recording.folder,
        started_at=recording.started_at,
        taken_names=frozenset(recording.files.values_list("name", flat=True)),
    )
    recorder = StageRecorder(signaling_config(classroom_id=recording.classroom_id, name="recorder"), config)
    error = ""
    try:
        asyncio.run(_supervise(recording, recorder, worker))
    except Exception as exc:  # our fault: the row says why; the job is queued again while wanted
        log.exception("recording job failed", extra={"recording_id": recording_id})
        error = f"{exc.__class__.__name__}: {exc}"
    finally:
        recording_finish(recording_id=recording_id, worker=worker, files=jsonable(recorder.files()), error=error)
    return "failed" if error else "stopped"


async def _supervise(recording: Recording, recorder: StageRecorder, worker: str) -> None:
    stage = asyncio.ensure_future(recorder.run())
    report = FilesReport(every_s=settings.CLASSCAST_RECORDING_FILES_REPORT_S)
    try:
        while True:
            files = jsonable(recorder.files())
            control = await database_sync_to_async(recording_heartbeat)(
                recording_id=recording.pk, worker=worker, stats=jsonable(recorder.stats()),
                joined=recorder.joined, files=files if report.due(files, now=time.monotonic()) else None,
            )
            if control["stop"]:
                log.info("recording stopping: %s", control.get("reason"), extra={"recording_id": recording.pk})
                return
            if stage.done():
                stage.result()  # raises what broke the stage connection
                raise RuntimeError("the stage connection closed")
            await asyncio.sleep(settings.CLASSCAST_RECORDING_HEARTBEAT_S)
    finally:
        await recorder.stop()
        try:
            await asyncio.wait_for(asyncio.shield(stage), timeout=15)
        except Exception:  # noqa: BLE001 - leaving anyway; what broke was reported above
            stage.cancel()
