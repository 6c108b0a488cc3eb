"""Starting and ending live sessions."""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import InvalidState, NotAllowed
from ..models import EventKind, HandRaise, LiveSession, SessionStatus, StageMembership, StageState
from ..permissions import INSTRUCTOR, Actor, can_manage_session
from ..selectors import session_live_get
from .events import event_record
from .media import media_session_end


def session_require_live(*, classroom_id: int) -> LiveSession:
    session = session_live_get(classroom_id=classroom_id)
    if session is None:
        raise InvalidState("the class is not live")
    return session


@transaction.atomic
def session_start(*, classroom_id: int, actor: Actor) -> LiveSession:
    if not can_manage_session(actor):
        raise NotAllowed("only the class instructor can start the class")
    if session_live_get(classroom_id=classroom_id) is not None:
        raise InvalidState("the class is already live")
    now = timezone.now()
    session = (
        LiveSession.objects.select_for_update()
        .filter(classroom_id=classroom_id, status=SessionStatus.SCHEDULED)
        .order_by("scheduled_for", "id")
        .first()
    ) or LiveSession(classroom_id=classroom_id)
    session.status = SessionStatus.LIVE
    session.started_at = now
    session.started_by_id = actor.user_id
    try:
        session.save()
    except IntegrityError:  # another process started it between our check and this write
        raise InvalidState("the class is already live") from None
    if actor.role == INSTRUCTOR:
        # The instructor is on stage from the first second.
        StageMembership.objects.create(
            session=session, user_id=actor.user_id, state=StageState.ON_STAGE, joined_at=now
        )
    event_record(session=session, kind=EventKind.SESSION_STARTED, actor_id=actor.user_id)
    from .recordings import recording_auto_start  # recordings needs session_require_live from here

    recording_auto_start(session=session)
    return session


@transaction.atomic
def session_end(*, classroom_id: int, actor: Actor) -> LiveSession:
    if not can_manage_session(actor):
        raise NotAllowed("only the class instructor can end the class")
    session = session_require_live(classroom_id=classroom_id)
    now = timezone.now()
    session.status = SessionStatus.ENDED
    session.ended_at = now
    session.save(update_fields=["status", "ended_at"])
    StageMembership.objects.filter(session=session, state__in=["invited", "on_stage"]).update(
        state=StageState.LEFT, left_at=now
    )
    HandRaise.objects.filter(session=session, lowered_at__isnull=True).update(lowered_at=now)
    event_record(session=session, kind=EventKind.SESSION_ENDED, actor_id=actor.user_id)
    from .recordings import recordings_session_ended

    recordings_session_ended(session=session)
    media_session_end(session=session)
    return session
