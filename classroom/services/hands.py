"""Raising and lowering hands."""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import InvalidState, NotAllowed
from ..models import EventKind, HandRaise, StageMembership
from ..permissions import Actor, can_act_for, can_raise_hand
from .sessions import session_require_live
from .events import event_record


@transaction.atomic
def hand_raise(*, classroom_id: int, actor: Actor) -> HandRaise:
    if not can_raise_hand(actor):
        raise NotAllowed("only students raise hands")
    session = session_require_live(classroom_id=classroom_id)
    if StageMembership.objects.filter(session=session, user_id=actor.user_id, state="on_stage").exists():
        raise InvalidState("you are already on stage")
    if HandRaise.objects.filter(session=session, user_id=actor.user_id, lowered_at__isnull=True).exists():
        raise InvalidState("your hand is already raised")
    try:
        hand = HandRaise.objects.create(session=session, user_id=actor.user_id, raised_at=timezone.now())
    except IntegrityError:  # raised from another tab at the same moment
        raise InvalidState("your hand is already raised") from None
    event_record(session=session, kind=EventKind.HAND_RAISED, actor_id=actor.user_id, subject_id=actor.user_id)
    return hand


@transaction.atomic
def hand_lower(*, classroom_id: int, actor: Actor, user_id: int | None = None) -> None:
    target = user_id or actor.user_id
    if not can_act_for(actor, target):
        raise NotAllowed("you can only lower your own hand")
    session = session_require_live(classroom_id=classroom_id)
    lowered = HandRaise.objects.filter(session=session, user_id=target, lowered_at__isnull=True).update(
        lowered_at=timezone.now()
    )
    if not lowered:
        raise InvalidState("that hand is not raised")
    event_record(session=session, kind=EventKind.HAND_LOWERED, actor_id=actor.user_id, subject_id=target)
