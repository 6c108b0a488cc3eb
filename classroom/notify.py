"""Fan-out to sockets and media nodes through the channel layer, always after the transaction commits."""
from __future__ import annotations

from typing import Any, Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def class_group(classroom_id: int) -> str:
    return f"class.{classroom_id}"


def class_broadcast_on_commit(*, classroom_id: int, build: Callable[[], dict[str, Any]]) -> None:
    """Send `build()` to every socket of the class once committed (so it reads committed state)."""
    transaction.on_commit(
        lambda: async_to_sync(get_channel_layer().group_send)(class_group(classroom_id), build())
    )


def channel_send_on_commit(*, channel: str, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: async_to_sync(get_channel_layer().send)(channel, message))
