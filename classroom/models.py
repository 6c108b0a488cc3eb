"""The classroom domain: classes, members, live sessions, the stage, hands, chat and the event log."""
from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    INSTRUCTOR = "instructor", "Instructor"
    STUDENT = "student", "Student"


def stream_key_new() -> str:
    return secrets.token_urlsafe(24)


class Classroom(models.Model):
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_public = models.BooleanField(default=False, help_text="Anyone may watch the broadcast.")
    stream_key = models.CharField(
        max_length=64, unique=True, default=stream_key_new, help_text="RTMP ingest key (OBS, ffmpeg, the compositor)."
    )
    hls_token_generation = models.PositiveIntegerField(
        default=0, help_text="Operator playlist links (manage.py stream_key) of older generations are refused."
    )
    auto_record = models.BooleanField(default=False, help_text="Record every session from its start.")
    recording_retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Delete this class's recordings after this many days (empty: the site default)."
    )
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
    BROADCAST_STARTED = "broadcast.started"
    BROADCAST_LIVE = "broadcast.live"
    BROADCAST_STOPPED = "broadcast.stopped"
    BROADCAST_FAILED = "broadcast.failed"
    LAYOUT = "broadcast.layout"
    RECORDING_STARTED = "recording.started"
    RECORDING_LIVE = "recording.live"
    RECORDING_STOPPED = "recording.stopped"
    RECORDING_INTERRUPTED = "recording.interrupted"


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


class Layout(models.TextChoices):
    GRID = "grid", "Grid"
    SPEAKER = "speaker", "Speaker"
    SINGLE = "single", "Single"


class BroadcastStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    STARTING = "starting", "Starting"
    LIVE = "live", "Live"
    RESTARTING = "restarting", "Restarting"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused"


ACTIVE_BROADCAST_STATES = (
    BroadcastStatus.QUEUED,
    BroadcastStatus.STARTING,
    BroadcastStatus.LIVE,
    BroadcastStatus.RESTARTING,
)


class Broadcast(models.Model):
    """One composed program of a live session: the compositor job's desired and reported state."""

    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="broadcasts")
    status = models.CharField(max_length=16, choices=BroadcastStatus.choices, default=BroadcastStatus.QUEUED)
    layout = models.CharField(max_length=16, choices=Layout.choices, default=Layout.GRID)
    focus_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stop_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the compositor job")
    attempts = models.PositiveIntegerField(default=0)
    cost_units = models.FloatField(default=1.0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    error_is_user = models.BooleanField(default=False, help_text="The cause is the user's (e.g. a bad RTMP URL).")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["session"],
                condition=Q(status__in=["queued", "starting", "live", "restarting"]),
                name="one_active_broadcast_per_session",
            )
        ]


class Destination(models.Model):
    """An extra RTMP destination of a class's broadcast (YouTube, another RTMP server)."""

    classroom = models.ForeignKey(Classroom, on_delete=models.CASCADE, related_name="destinations")
    name = models.CharField(max_length=80)
    url = models.CharField(max_length=500)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class RecordingStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    STARTING = "starting", "Starting"
    RECORDING = "recording", "Recording"
    RESTARTING = "restarting", "Restarting"
    PROCESSING = "processing", "Processing"
    PUBLISHED = "published", "Published"
    FAILED = "failed", "Failed"


ACTIVE_RECORDING_STATES = (
    RecordingStatus.QUEUED,
    RecordingStatus.STARTING,
    RecordingStatus.RECORDING,
    RecordingStatus.RESTARTING,
)


class Recording(models.Model):
    """One recording of a live session: the recorder job's control row while it records, then the
    post-processing status, the published manifest and the retention date."""

    classroom = models.ForeignKey(Classroom, on_delete=models.PROTECT, related_name="recordings")
    session = models.ForeignKey(LiveSession, on_delete=models.PROTECT, related_name="recordings")
    status = models.CharField(max_length=16, choices=RecordingStatus.choices, default=RecordingStatus.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    auto = models.BooleanField(default=False, help_text="Started by the class's auto-record setting.")
    stop_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the recorder job")
    attempts = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="t=0 of every offset in the manifest")
    stopped_at = models.DateTimeField(null=True, blank=True)
    problems = models.JSONField(default=list, blank=True, help_text="Why the recording is incomplete.")
    gaps = models.JSONField(default=list, blank=True, help_text="[{start_ms, end_ms, reason}] not recorded")
    progress = models.JSONField(default=dict, blank=True, help_text="Post-processing steps and their state.")
    qc = models.JSONField(default=list, blank=True, help_text="Quality-check warnings.")
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    manifest = models.JSONField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    shared_with_students = models.BooleanField(default=False, help_text="The class's students may watch it.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["session"],
                condition=Q(status__in=["queued", "starting", "recording", "restarting"]),
                name="one_active_recording_per_session",
            )
        ]

    def __str__(self) -> str:
        return f"Recording {self.pk} of {self.classroom} ({self.status})"

    @property
    def folder(self) -> str:
        """The recording's folder, in the spool and in storage; built from ids, never from input."""
        return f"class-{self.classroom_id}/rec-{self.pk}"

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def duration_text(self) -> str:
        """h:mm:ss (or m:ss) for lists; empty until known."""
        if self.duration_ms is None:
            return ""
        seconds = self.duration_ms // 1000
        hours, rest = divmod(seconds, 3600)
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class FileRole(models.TextChoices):
    TRACK = "track", "Track"
    PROGRAM = "program", "Program (MP4)"
    PROGRAM_PLAYLIST = "program_playlist", "Program (HLS playlist)"
    MANIFEST = "manifest", "Manifest"
    THUMBNAIL = "thumbnail", "Thumbnail"
    POSTER = "poster", "Poster"


class RecordingFile(models.Model):
    """A file of a recording. Created by the recorder when it opens a track file, so a file written by a
    job that then died is still known; completed by post-processing (probe, checksum, QC)."""

    recording = models.ForeignKey(Recording, on_delete=models.CASCADE, related_name="files")
    role = models.CharField(max_length=20, choices=FileRole.choices)
    name = models.CharField(max_length=200, help_text="Path inside the recording's folder, e.g. tracks/u3-video-1.webm")
    kind = models.CharField(max_length=8, blank=True)
    codec = models.CharField(max_length=16, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    participant_name = models.CharField(max_length=200, blank=True)
    participant_role = models.CharField(max_length=16, blank=True)
    start_ms = models.IntegerField(default=0)
    end_ms = models.IntegerField(null=True, blank=True)
    first_media_ms = models.IntegerField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    frames = models.IntegerField(null=True, blank=True)
    width = models.IntegerField(null=True, blank=True)
    height = models.IntegerField(null=True, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    stored = models.BooleanField(default=False, help_text="Published to the recordings storage.")
    qc = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["start_ms", "id"]
        constraints = [models.UniqueConstraint(fields=["recording", "name"], name="recording_file_unique_name")]

    def __str__(self) -> str:
        return self.name


class AuditEntry(models.Model):
    """Who viewed, downloaded, shared or deleted a recording. Rows outlive the recording they name."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    recording_id = models.IntegerField(null=True, blank=True, db_index=True)
    classroom_id = models.IntegerField(null=True, blank=True)
    target = models.CharField(max_length=300, blank=True, help_text="The file, or what was done")
    ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name or '-'} {self.action} {self.target}"
