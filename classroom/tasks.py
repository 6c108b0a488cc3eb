"""Celery tasks: thin wrappers over services."""
from celery import shared_task

from .services.broadcast import broadcasts_watchdog as _broadcasts_watchdog
from .services.media import media_nodes_reap as _media_nodes_reap


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
