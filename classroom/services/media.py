"""Pinning a class to a media node, and telling that node about stage changes."""
from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..errors import InvalidState
from ..models import LiveSession, MediaNode
from ..notify import channel_send_on_commit

NODE_STALE_AFTER = timedelta(seconds=15)


def media_node_channel(node_id: str) -> str:
    return f"media-node.{node_id}"[:99]


def media_node_heartbeat(*, node_id: str, peers: int, capacity: int) -> None:
    MediaNode.objects.update_or_create(
        node_id=node_id,
        defaults={
            "channel": media_node_channel(node_id),
            "peers": peers,
            "capacity": capacity,
            "heartbeat_at": timezone.now(),
        },
    )


def media_node_remove(*, node_id: str) -> None:
    MediaNode.objects.filter(node_id=node_id).delete()


def media_nodes_alive():
    return MediaNode.objects.filter(heartbeat_at__gte=timezone.now() - NODE_STALE_AFTER)


@transaction.atomic
def media_node_for_session(*, session_id: int) -> str:
    """The channel of the session's media node, allocating the least-loaded live node when needed."""
    session = LiveSession.objects.select_for_update().get(pk=session_id)
    alive = media_nodes_alive()
    if session.media_node and alive.filter(node_id=session.media_node).exists():
        return media_node_channel(session.media_node)
    node = alive.filter(peers__lt=F("capacity")).order_by("peers", "node_id").first()
    if node is None:
        raise InvalidState("no media node is available; try again in a moment")
    session.media_node = node.node_id
    session.save(update_fields=["media_node"])
    return node.channel


def media_nodes_reap() -> int:
    """Forget nodes whose heartbeat stopped, so sessions pinned to them are re-allocated."""
    deleted, _ = MediaNode.objects.filter(heartbeat_at__lt=timezone.now() - NODE_STALE_AFTER * 4).delete()
    return deleted


def media_user_kick(*, session: LiveSession, user_id: int, reason: str) -> None:
    if session.media_node:
        channel_send_on_commit(
            channel=media_node_channel(session.media_node),
            message={"type": "media.kick", "session_id": session.pk, "user_id": user_id, "reason": reason},
        )


def media_user_mute(*, session: LiveSession, user_id: int, kind: str, muted: bool) -> None:
    if session.media_node:
        channel_send_on_commit(
            channel=media_node_channel(session.media_node),
            message={"type": "media.mute", "session_id": session.pk, "user_id": user_id, "kind": kind, "muted": muted},
        )


def media_session_end(*, session: LiveSession) -> None:
    if session.media_node:
        channel_send_on_commit(
            channel=media_node_channel(session.media_node),
            message={"type": "media.end", "session_id": session.pk, "reason": "session_ended"},
        )

