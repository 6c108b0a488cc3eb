"""Who has the class open right now (one row per socket, so several tabs and processes add up)."""
from __future__ import annotations

from django.db import transaction

from ..models import Presence
from ..notify import class_broadcast_on_commit
from ..selectors import participants_list


def presence_announce(*, classroom_id: int) -> None:
    """Everyone in the class gets the participants list again once committed (e.g. a role changed)."""
    _announce(classroom_id)


def _announce(classroom_id: int) -> None:
    class_broadcast_on_commit(
        classroom_id=classroom_id,
        build=lambda: {"type": "classroom.presence", "participants": participants_list(classroom_id=classroom_id)},
    )


@transaction.atomic
def presence_enter(
    *, classroom_id: int, user_id: int | None, channel_name: str, page: str, hidden: bool = False
) -> None:
    Presence.objects.update_or_create(
        channel_name=channel_name,
        defaults={"classroom_id": classroom_id, "user_id": user_id, "page": page, "hidden": hidden},
    )
    if not hidden:
        _announce(classroom_id)


@transaction.atomic
def presence_leave(*, channel_name: str) -> None:
    row = Presence.objects.filter(channel_name=channel_name).first()
    if row is None:
        return
    row.delete()
    if not row.hidden:
        _announce(row.classroom_id)
