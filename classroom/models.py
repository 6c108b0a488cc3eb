"""The classroom domain: classes, members, live sessions, the stage, hands, chat and the event log."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    INSTRUCTOR = "instructor", "Instructor"
    STUDENT = "student", "Student"


class Classroom(models.Model):
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_public = models.BooleanField(default=False, help_text="Anyone may watch the broadcast.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class Membership(models.Model):
    classroom = models.ForeignKey(Classroom, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STUDENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["classroom", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.classroom} ({self.role})"


class SessionStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    LIVE = "live", "Live"
    ENDED = "ended", "Ended"


class LiveSession(models.Model):
    classroom = models.ForeignKey(Classroom, on_delete=models.CASCADE, related_name="sessions")
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.SCHEDULED)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    media_node = models.CharField(max_length=100, blank=True, help_text="Media node the stage is pinned to.")

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["classroom"], condition=Q(status="live"), name="one_live_session_per_class"
            )
        ]

    def __str__(self) -> str:
        return f"{self.classroom} session {self.pk} ({self.status})"


class StageState(models.TextChoices):
    INVITED = "invited", "Invited"
    ON_STAGE = "on_stage", "On stage"
    DECLINED = "declined", "Declined"
    LEFT = "left", "Left"
    REMOVED = "removed", "Removed"


ACTIVE_STAGE_STATES = (StageState.INVITED, StageState.ON_STAGE)


class StageMembership(models.Model):
    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="stage")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=StageState.choices)
    invited_at = models.DateTimeField(null=True, blank=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    left_at = models.DateTimeField(null=True, blank=True)
    audio_muted = models.BooleanField(default=False)
    video_muted = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "user"],
                condition=Q(state__in=["invited", "on_stage"]),
                name="one_active_stage_membership",
            )
        ]


class HandRaise(models.Model):
    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="hands")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    raised_at = models.DateTimeField()
    lowered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["raised_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "user"], condition=Q(lowered_at__isnull=True), name="one_raised_hand"
            )
        ]


class ChatMessage(models.Model):
    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="chat")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]


class EventKind(models.TextChoices):
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    JOINED = "participant.joined"
    LEFT = "participant.left"
    HAND_RAISED = "hand.raised"
    HAND_LOWERED = "hand.lowered"
    INVITED = "stage.invited"
    ON_STAGE = "stage.joined"
    DECLINED = "stage.declined"
    STAGE_LEFT = "stage.left"
    REMOVED = "stage.removed"
    MUTED = "stage.muted"
    CHAT = "chat.message"
    DENIED = "action.denied"


class SessionEvent(models.Model):
    """Append-only log of what happened in a session; later turned into a recording's timeline."""

    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]


class Presence(models.Model):
    """One open socket: who is in the class right now, across every web process."""

    classroom = models.ForeignKey(Classroom, on_delete=models.CASCADE, related_name="presence")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE, related_name="+")
    channel_name = models.CharField(max_length=120, unique=True)
    page = models.CharField(max_length=16, default="class")
    hidden = models.BooleanField(default=False)
    connected_at = models.DateTimeField(auto_now_add=True)


class MediaNode(models.Model):
    """A process that owns peer connections; classes are pinned to one (see LiveSession.media_node)."""

    node_id = models.CharField(max_length=100, primary_key=True)
    channel = models.CharField(max_length=120)
    capacity = models.PositiveIntegerField(default=12)
    peers = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField()
