"""Who is on stage: invitations, accepting, leaving, removal and muting."""
from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import InvalidState, NotAllowed, NotFound
from ..models import EventKind, HandRaise, LiveSession, Membership, StageMembership, StageState
from ..permissions import Actor, can_act_for, can_manage_session
from .events import event_record
from .media import media_user_kick, media_user_mute
from .sessions import session_require_live


MEDIA_KINDS = ("audio", "video")


def _active(session: LiveSession, user_id: int) -> StageMembership | None:
    return (
        StageMembership.objects.select_for_update()
        .filter(session=session, user_id=user_id, state__in=[StageState.INVITED, StageState.ON_STAGE])
        .first()
    )


@transaction.atomic
def stage_invite(*, classroom_id: int, actor: Actor, user_id: int) -> StageMembership:
    if not can_manage_session(actor):
        raise NotAllowed("only the class instructor can invite students on stage")
    session = session_require_live(classroom_id=classroom_id)
    if not Membership.objects.filter(classroom_id=classroom_id, user_id=user_id).exists():
        raise NotFound("that person is not a member of this class")
    if _active(session, user_id) is not None:
        raise InvalidState("that person is already invited or on stage")
    taken = StageMembership.objects.filter(session=session, state__in=[StageState.INVITED, StageState.ON_STAGE]).count()
    if taken >= settings.CLASSCAST_STAGE_LIMIT:
        raise InvalidState(f"the stage is full ({settings.CLASSCAST_STAGE_LIMIT} places)")
    try:
        member = StageMembership.objects.create(
            session=session, user_id=user_id, state=StageState.INVITED, invited_at=timezone.now()
        )
    except IntegrityError:  # invited from another tab at the same moment
        raise InvalidState("that person is already invited or on stage") from None
    event_record(session=session, kind=EventKind.INVITED, actor_id=actor.user_id, subject_id=user_id)
    return member


@transaction.atomic
def stage_accept(*, classroom_id: int, actor: Actor) -> StageMembership:
    session = session_require_live(classroom_id=classroom_id)
    member = _active(session, actor.user_id)
    if member is None or member.state != StageState.INVITED:
        raise InvalidState("you have no invitation to the stage")
    now = timezone.now()
    member.state = StageState.ON_STAGE
    member.joined_at = now
    member.save(update_fields=["state", "joined_at"])
    HandRaise.objects.filter(session=session, user_id=actor.user_id, lowered_at__isnull=True).update(lowered_at=now)
    event_record(session=session, kind=EventKind.ON_STAGE, actor_id=actor.user_id, subject_id=actor.user_id)
    return member


@transaction.atomic
def stage_decline(*, classroom_id: int, actor: Actor) -> None:
    session = session_require_live(classroom_id=classroom_id)
    member = _active(session, actor.user_id)
    if member is None or member.state != StageState.INVITED:
        raise InvalidState("you have no invitation to the stage")
    member.state = StageState.DECLINED
    member.left_at = timezone.now()
    member.save(update_fields=["state", "left_at"])
    event_record(session=session, kind=EventKind.DECLINED, actor_id=actor.user_id, subject_id=actor.user_id)


@transaction.atomic
def stage_leave(*, classroom_id: int, actor: Actor) -> None:
    session = session_require_live(classroom_id=classroom_id)
    member = _active(session, actor.user_id)
    if member is None:
        raise InvalidState("you are not on stage")
    member.state = StageState.LEFT
    member.left_at = timezone.now()
    member.save(update_fields=["state", "left_at"])
    event_record(session=session, kind=EventKind.STAGE_LEFT, actor_id=actor.user_id, subject_id=actor.user_id)
    media_user_kick(session=session, user_id=actor.user_id, reason="left")


@transaction.atomic
def stage_remove(*, classroom_id: int, actor: Actor, user_id: int) -> None:
    if not can_manage_session(actor):
        raise NotAllowed("only the class instructor can take people off stage")
    session = session_require_live(classroom_id=classroom_id)
    member = _active(session, user_id)
    if member is None:
        raise InvalidState("that person is not on stage")
    member.state = StageState.REMOVED
    member.left_at = timezone.now()
    member.save(update_fields=["state", "left_at"])
    event_record(session=session, kind=EventKind.REMOVED, actor_id=actor.user_id, subject_id=user_id)
    media_user_kick(session=session, user_id=user_id, reason="removed")


@transaction.atomic
def stage_mute(*, classroom_id: int, actor: Actor, kind: str, muted: bool, user_id: int | None = None) -> None:
    if kind not in MEDIA_KINDS:
        raise InvalidState('kind must be "audio" or "video"')
    target = user_id or actor.user_id
    if not can_act_for(actor, target):
        raise NotAllowed("you can only mute yourself")
    if target != actor.user_id and not muted:
        # Nobody's microphone or camera is switched on by someone else.
        raise NotAllowed("only the participant can unmute themself")
    session = session_require_live(classroom_id=classroom_id)
    member = _active(session, target)
    if member is None or member.state != StageState.ON_STAGE:
        raise InvalidState("that person is not on stage")
    setattr(member, f"{kind}_muted", muted)
    member.save(update_fields=[f"{kind}_muted"])
    media_user_mute(session=session, user_id=target, kind=kind, muted=muted)
    event_record(
        session=session,
        kind=EventKind.MUTED,
        actor_id=actor.user_id,
        subject_id=target,
        data={"kind": kind, "muted": muted},
    )
