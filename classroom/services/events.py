"""The session event log, and telling every member of the class what changed."""
from __future__ import annotations

import logging
from typing import Any

from ..models import LiveSession, SessionEvent
from ..notify import class_broadcast_on_commit
from ..selectors import class_state

log = logging.getLogger("classcast.events")


def event_record(
    *,
    session: LiveSession,
    kind: str,
    actor_id: int | None = None,
    subject_id: int | None = None,
    data: dict[str, Any] | None = None,
    with_state: bool = True,
) -> SessionEvent:
    """Append to the log and, once committed, send `classroom.event` (with a fresh snapshot) to the class."""
    event = SessionEvent.objects.create(
        session=session, kind=kind, actor_id=actor_id, subject_id=subject_id, data=data or {}
    )
    classroom_id = session.classroom_id
    log.info(
        kind,
        extra={"class_id": classroom_id, "session_id": session.pk, "user_id": actor_id, "subject_id": subject_id},
    )

    def build() -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "classroom.event",
            "event": {
                "kind": kind,
                "actor_id": actor_id,
                "subject_id": subject_id,
                "data": data or {},
                "at": event.created_at.isoformat(),
            },
        }
        if with_state:
            message["state"] = class_state(classroom_id=classroom_id)
        return message

    class_broadcast_on_commit(classroom_id=classroom_id, build=build)
    return event
