"""Permission rules as pure functions over an `Actor` (who is acting, in which role, in one class)."""
from __future__ import annotations

from dataclasses import dataclass

INSTRUCTOR = "instructor"
STUDENT = "student"


@dataclass(frozen=True)
class Actor:
    user_id: int
    is_staff: bool = False
    role: str | None = None  # the membership role in this class, None for non-members


def can_view_class(actor: Actor) -> bool:
    return actor.is_staff or actor.role is not None


def can_manage_session(actor: Actor) -> bool:
    """Start/end sessions, manage the stage, mute others."""
    return actor.is_staff or actor.role == INSTRUCTOR


def can_raise_hand(actor: Actor) -> bool:
    return actor.role == STUDENT


def can_act_for(actor: Actor, user_id: int) -> bool:
    """A student acts only for themself; the instructor (or staff) may act for anyone in the class."""
    return actor.user_id == user_id or can_manage_session(actor)


def can_chat(actor: Actor) -> bool:
    return can_view_class(actor)


def can_publish(actor: Actor, *, on_stage: bool) -> bool:
    """Only stage members (or the instructor) send media."""
    return on_stage or can_manage_session(actor)


def can_record(actor: Actor) -> bool:
    """Start and stop recording a session."""
    return can_manage_session(actor)


def can_review_recording(actor: Actor, *, published: bool, shared_with_students: bool) -> bool:
    """Staff see every recording and a class's instructor that class's; a student sees one only once it
    is published and the class has shared it with its students."""
    if actor.is_staff or actor.role == INSTRUCTOR:
        return True
    return actor.role == STUDENT and published and shared_with_students


def can_manage_recording(actor: Actor) -> bool:
    """Share with students, delete, process again."""
    return actor.is_staff or actor.role == INSTRUCTOR
