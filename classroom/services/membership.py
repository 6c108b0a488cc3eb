"""When someone's access to a class may have changed while they are in it: a membership deleted or its
role edited (the admin), an account deleted, deactivated or losing staff. Called by the receivers in
classroom/signals.py, inside the transaction that made the change.

Their open sockets are told once the change is committed and re-check it from the database (the
consumer closes those that may no longer see the class, and re-sends the welcome when the role
changed); a live session forgets whoever lost access on stage and with a raised hand, so nobody sees
a ghost and the media node drops their connections.
"""
from __future__ import annotations

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import ACTIVE_STAGE_STATES, EventKind, HandRaise, LiveSession, SessionStatus, StageMembership, StageState
from ..notify import user_send_on_commit
from ..permissions import can_view_class
from ..selectors import actor_current
from .events import event_record
from .media import media_user_kick
from .presence import presence_announce

# The channel-layer event each of the person's sockets receives (ClassConsumer.classroom_access).
ACCESS_EVENT = "classroom.access"
NO_ACCESS = "no_access"  # the reason the stage and the media node are given


@transaction.atomic
def membership_access_changed(
    *, user_id: int, classroom_id: int | None = None, clear_live_state: bool = True, account_deleted: bool = False
) -> None:
    """Make the person's open sockets re-check their access to `classroom_id` (None: every class).

    `clear_live_state=False` when the session rows themselves are being deleted in the same
    transaction (a class deleted with its memberships); `account_deleted` when the user row goes too:
    then no row written here may point at it.
    """
    if clear_live_state:
        _live_state_clear(user_id=user_id, classroom_id=classroom_id, account_deleted=account_deleted)
        if classroom_id is not None:
            presence_announce(classroom_id=classroom_id)  # the roles the participants list shows
    user_send_on_commit(user_id=user_id, message={"type": ACCESS_EVENT, "classroom_id": classroom_id})


def membership_revoked(*, classroom_id: int, user_id: int) -> None:
    """A membership was deleted: the person's sockets in that class close unless they are staff."""
    membership_access_changed(user_id=user_id, classroom_id=classroom_id)


def _live_state_clear(*, user_id: int, classroom_id: int | None, account_deleted: bool) -> None:
    sessions = LiveSession.objects.filter(status=SessionStatus.LIVE).filter(
        Q(stage__user_id=user_id, stage__state__in=ACTIVE_STAGE_STATES)
        | Q(hands__user_id=user_id, hands__lowered_at__isnull=True)
    )
    if classroom_id is not None:
        sessions = sessions.filter(classroom_id=classroom_id)
    for session in sessions.distinct():
        if not account_deleted:
            actor = actor_current(user_id=user_id, classroom_id=session.classroom_id)
            if actor is not None and can_view_class(actor):
                continue  # still in (staff, or only the role changed): they keep their place
        _session_forget(session=session, user_id=user_id, account_deleted=account_deleted)


def _session_forget(*, session: LiveSession, user_id: int, account_deleted: bool) -> None:
    now = timezone.now()
    subject_id = None if account_deleted else user_id  # an event row must not point at a row being deleted
    data = {"reason": NO_ACCESS, "user_id": user_id}
    member = (
        StageMembership.objects.select_for_update()
        .filter(session=session, user_id=user_id, state__in=ACTIVE_STAGE_STATES)
        .first()
    )
    if member is not None:
        member.state = StageState.REMOVED
        member.left_at = now
        member.save(update_fields=["state", "left_at"])
        event_record(session=session, kind=EventKind.REMOVED, subject_id=subject_id, data=data)
        media_user_kick(session=session, user_id=user_id, reason=NO_ACCESS)
    lowered = HandRaise.objects.filter(session=session, user_id=user_id, lowered_at__isnull=True).update(lowered_at=now)
    if lowered:
        event_record(session=session, kind=EventKind.HAND_LOWERED, subject_id=subject_id, data=data)
