"""Read-side queries: who someone is in a class, and the class's live state as clients see it."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from .models import (
    ACTIVE_RECORDING_STATES,
    ACTIVE_STAGE_STATES,
    Broadcast,
    ChatMessage,
    Classroom,
    HandRaise,
    LiveSession,
    Membership,
    Presence,
    Recording,
    Role,
    SessionStatus,
    StageMembership,
)
from .permissions import Actor

User = get_user_model()
CHAT_HISTORY = 50


def display_name(user: Any) -> str:
    return (user.get_full_name() or user.get_username()) if user is not None else "Unknown"


def actor_get(*, user: Any, classroom_id: int) -> Actor:
    role = (
        Membership.objects.filter(classroom_id=classroom_id, user_id=user.pk).values_list("role", flat=True).first()
    )
    return Actor(user_id=user.pk, is_staff=bool(user.is_staff), role=role)


def actor_current(*, user_id: int, classroom_id: int) -> Actor | None:
    """Who this person is in the class now, read afresh (an open socket's user object is from its
    connect); None when the account is gone or deactivated."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    return None if user is None else actor_get(user=user, classroom_id=classroom_id)


def classrooms_for_user(*, user: Any) -> QuerySet[Classroom]:
    if user.is_staff:
        return Classroom.objects.all()
    return Classroom.objects.filter(memberships__user=user).distinct()


def session_live_get(*, classroom_id: int) -> LiveSession | None:
    return LiveSession.objects.filter(classroom_id=classroom_id, status=SessionStatus.LIVE).first()


def stage_member_muted(*, session_id: int, user_id: int) -> list[str] | None:
    """The kinds an on-stage member has muted, or None when they are not on stage."""
    member = StageMembership.objects.filter(session_id=session_id, user_id=user_id, state="on_stage").first()
    if member is None:
        return None
    return [kind for kind in ("audio", "video") if getattr(member, f"{kind}_muted")]


def _roles(classroom_id: int) -> dict[int, str]:
    return dict(Membership.objects.filter(classroom_id=classroom_id).values_list("user_id", "role"))


def _person(user: Any, roles: dict[int, str]) -> dict[str, Any]:
    return {"user_id": user.pk, "name": display_name(user), "role": roles.get(user.pk, "staff")}


def participants_list(*, classroom_id: int) -> list[dict[str, Any]]:
    roles = _roles(classroom_id)
    rows = (
        Presence.objects.filter(classroom_id=classroom_id, hidden=False, user__isnull=False)
        .select_related("user")
        .order_by("connected_at")
    )
    seen: dict[int, dict[str, Any]] = {}
    for row in rows:
        entry = seen.setdefault(row.user_id, {**_person(row.user, roles), "pages": []})
        if row.page not in entry["pages"]:
            entry["pages"].append(row.page)
    return list(seen.values())


def chat_history(*, session_id: int, limit: int = CHAT_HISTORY) -> list[dict[str, Any]]:
    rows = ChatMessage.objects.filter(session_id=session_id).select_related("author").order_by("-created_at", "-id")
    return [chat_message_json(m) for m in reversed(list(rows[:limit]))]


def chat_message_json(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": message.pk,
        "user_id": message.author_id,
        "name": display_name(message.author),
        "text": message.text,
        "at": message.created_at.isoformat(),
    }


def class_state(*, classroom_id: int) -> dict[str, Any]:
    """The snapshot every client renders from: session, stage, raised hands, participants."""
    roles = _roles(classroom_id)
    session = session_live_get(classroom_id=classroom_id)
    state: dict[str, Any] = {
        "session": None, "stage": [], "hands": [], "participants": [], "broadcast": None, "recording": None,
    }
    state["participants"] = participants_list(classroom_id=classroom_id)
    if session is None:
        return state
    state["session"] = {
        "id": session.pk,
        "status": session.status,
        "started_at": session.started_at.isoformat() if session.started_at else None,
    }
    stage = StageMembership.objects.filter(session=session, state__in=ACTIVE_STAGE_STATES).select_related("user")
    state["stage"] = [
        {
            **_person(m.user, roles),
            "state": m.state,
            "since": m.joined_at.isoformat() if m.joined_at else None,
            "audio_muted": m.audio_muted,
            "video_muted": m.video_muted,
        }
        for m in stage
    ]
    hands = HandRaise.objects.filter(session=session, lowered_at__isnull=True).select_related("user")
    state["hands"] = [{**_person(h.user, roles), "raised_at": h.raised_at.isoformat()} for h in hands]
    broadcast = Broadcast.objects.filter(session=session).order_by("-created_at", "-id").first()
    state["broadcast"] = (
        {
            "id": broadcast.pk,
            "status": broadcast.status,
            "layout": broadcast.layout,
            "focus_user_id": broadcast.focus_user_id,
            "error": broadcast.error,
        }
        if broadcast is not None
        else None
    )
    recording = Recording.objects.filter(session=session, status__in=ACTIVE_RECORDING_STATES, stop_requested=False).first()
    state["recording"] = (
        {"id": recording.pk, "status": recording.status, "started_at": recording.started_at.isoformat() if recording.started_at else None}
        if recording is not None
        else None
    )
    return state


def class_members(*, classroom_id: int) -> list[dict[str, Any]]:
    rows = Membership.objects.filter(classroom_id=classroom_id).select_related("user").order_by("role", "user__username")
    return [{"user_id": m.user_id, "name": display_name(m.user), "role": m.role} for m in rows]


def instructor_ids(*, classroom_id: int) -> list[int]:
    return list(
        Membership.objects.filter(classroom_id=classroom_id, role=Role.INSTRUCTOR).values_list("user_id", flat=True)
    )
