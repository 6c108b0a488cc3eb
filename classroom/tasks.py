"""Celery tasks: thin wrappers over services."""
from celery import shared_task

from .services.media import media_nodes_reap as _media_nodes_reap


@shared_task(name="classroom.tasks.media_nodes_reap")
def media_nodes_reap() -> int:
    """Forget media nodes whose heartbeat stopped, so their classes are pinned to a live node."""
    return _media_nodes_reap()
