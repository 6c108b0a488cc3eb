"""Celery tasks: thin wrappers over services."""
from celery import shared_task

from .services.broadcast import broadcasts_watchdog as _broadcasts_watchdog
from .services.media import media_nodes_reap as _media_nodes_reap
from .services.recording_access import recordings_expire as _recordings_expire
from .services.recordings import recordings_watchdog as _recordings_watchdog


@shared_task(name="classroom.tasks.media_nodes_reap")
def media_nodes_reap() -> int:
    """Forget media nodes whose heartbeat stopped, so their classes are pinned to a live node."""
    return _media_nodes_reap()


@shared_task(name="classroom.tasks.broadcast_run", acks_late=True)
def broadcast_run(broadcast_id: int) -> str:
    """The compositor job of one broadcast (media queue); returns when its row asks it to stop."""
    from .egress import broadcast_job_run  # PyAV and aiortc load only in workers that run it

    return broadcast_job_run(broadcast_id=broadcast_id)


@shared_task(name="classroom.tasks.broadcasts_watchdog")
def broadcasts_watchdog() -> list[int]:
    """Queue again the broadcasts whose worker stopped beating."""
    return _broadcasts_watchdog()


@shared_task(name="classroom.tasks.recording_run", acks_late=True)
def recording_run(recording_id: int) -> str:
    """The recorder job of one recording (media queue); returns when its row asks it to stop."""
    from .recording_job import recording_job_run  # PyAV and aiortc load only in workers that run it

    return recording_job_run(recording_id=recording_id)


@shared_task(name="classroom.tasks.recordings_watchdog")
def recordings_watchdog() -> list[int]:
    """Queue again the recordings whose worker stopped beating (the gap is noted)."""
    return _recordings_watchdog()


@shared_task(name="classroom.tasks.recording_process", bind=True, max_retries=5)
def recording_process(self, recording_id: int, step: str) -> str:  # noqa: ANN001 - Celery's bound task
    """One post-processing step; retried with backoff, then recorded as failed (see the service)."""
    from .services import recording_processing as processing

    processing.progress_set(recording_id=recording_id, step=step, state="running", attempt=self.request.retries + 1)
    try:
        processing.recording_process_step(recording_id=recording_id, step=step)
    except Exception as exc:  # noqa: BLE001 - every failure is retried, then explained on the row
        pending = isinstance(exc, processing.ProcessingPending)
        if self.request.retries < self.max_retries:
            processing.progress_set(recording_id=recording_id, step=step, state="retrying", error=str(exc),
                                    attempt=self.request.retries + 1)
            raise self.retry(exc=exc, countdown=2 if pending else min(60, 2 ** (self.request.retries + 1)))
        processing.progress_set(recording_id=recording_id, step=step, state="failed", error=f"{exc.__class__.__name__}: {exc}")
        if step not in processing.BEST_EFFORT:
            return "failed"
    else:
        processing.progress_set(recording_id=recording_id, step=step, state="done")
    following = processing.next_step(step)
    if following is not None:
        recording_process.delay(recording_id, following)
    return "done"


@shared_task(name="classroom.tasks.recordings_expire")
def recordings_expire() -> list[int]:
    """Delete recordings past their retention date."""
    return _recordings_expire()
