"""Recording, as services: who may start and stop it, auto-record, the job's claim, heartbeat and
finish, the watchdog that resumes a recording whose worker died (noting the gap), and the timeline."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from classroom.errors import InvalidState, NotAllowed
from classroom.models import Classroom, Recording, RecordingStatus, SessionEvent
from classroom.recording_job import FilesReport
from classroom.selectors import actor_get, class_state
from classroom.services.recordings import (
    recording_claim,
    recording_finish,
    recording_heartbeat,
    recording_start,
    recording_stop,
    recordings_watchdog,
)
from classroom.services.sessions import session_end, session_start

User = get_user_model()
pytestmark = pytest.mark.usefixtures("fast_passwords")
FILE = {"name": "tracks/u1-video-1.webm", "kind": "video", "codec": "vp8", "user_id": None, "participant_name": "Ada",
        "participant_role": "instructor", "start_ms": 0, "first_media_ms": 300, "end_ms": None, "frames": 10}


@pytest.fixture
def cls(demo):
    class Cls:
        id = demo["class_id"]

        def actor(self, username):
            return actor_get(user=User.objects.get(username=username), classroom_id=self.id)

    c = Cls()
    session_start(classroom_id=c.id, actor=c.actor("ada"))
    return c


def test_only_the_instructor_records_and_only_once(cls, django_capture_on_commit_callbacks):
    with pytest.raises(NotAllowed):
        recording_start(classroom_id=cls.id, actor=cls.actor("ben"))
    with django_capture_on_commit_callbacks() as callbacks:
        recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    assert recording.status == RecordingStatus.QUEUED
    assert len(callbacks) == 2  # the class is told (the indicator), and the job is queued
    assert class_state(classroom_id=cls.id)["recording"]["id"] == recording.pk
    with pytest.raises(InvalidState):
        recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    with pytest.raises(NotAllowed):
        recording_stop(classroom_id=cls.id, actor=cls.actor("ben"))


def test_not_live_no_recording(demo):
    ada = actor_get(user=User.objects.get(username="ada"), classroom_id=demo["class_id"])
    with pytest.raises(InvalidState):
        recording_start(classroom_id=demo["class_id"], actor=ada)


def test_stop_before_the_job_runs_goes_straight_to_processing(cls, django_capture_on_commit_callbacks):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    with django_capture_on_commit_callbacks() as callbacks:
        recording_stop(classroom_id=cls.id, actor=cls.actor("ada"))
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.PROCESSING and recording.stop_requested
    assert recording.problems and "Nothing was recorded" in recording.problems[0]
    assert class_state(classroom_id=cls.id)["recording"] is None  # the indicator goes away
    assert len(callbacks) == 2  # post-processing queued, the class told
    # A late delivery of the job does nothing.
    assert recording_claim(recording_id=recording.pk, worker="h:1") is None


def test_job_lifecycle_claim_heartbeat_stop_finish(cls, django_capture_on_commit_callbacks):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    claimed = recording_claim(recording_id=recording.pk, worker="h:1")
    assert claimed.status == RecordingStatus.STARTING and claimed.started_at is not None
    assert recording_claim(recording_id=recording.pk, worker="h:2") is None  # runs elsewhere
    control = recording_heartbeat(recording_id=recording.pk, worker="h:1", stats={"frames": 10}, joined=True, files=[FILE])
    assert control["stop"] is False
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.RECORDING
    assert list(recording.files.values_list("name", "first_media_ms")) == [(FILE["name"], 300)]
    assert recording_heartbeat(recording_id=recording.pk, worker="h:2", stats={}, joined=True, files=[])["stop"]
    recording_stop(classroom_id=cls.id, actor=cls.actor("ada"))
    assert recording_heartbeat(recording_id=recording.pk, worker="h:1", stats={}, joined=True, files=[])["stop"]
    with django_capture_on_commit_callbacks() as callbacks:
        recording_finish(recording_id=recording.pk, worker="h:1", files=[{**FILE, "end_ms": 5000, "frames": 150}])
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.PROCESSING and recording.complete and recording.stopped_at
    assert recording.files.get().end_ms == 5000
    assert len(callbacks) == 1  # post-processing


def test_a_heartbeat_without_files_leaves_the_file_rows_alone(cls):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    recording_claim(recording_id=recording.pk, worker="h:1")
    recording_heartbeat(recording_id=recording.pk, worker="h:1", stats={}, joined=True, files=[{**FILE, "frames": 10}])
    control = recording_heartbeat(recording_id=recording.pk, worker="h:1", stats={"frames": 99}, joined=True, files=None)
    assert control["stop"] is False
    recording.refresh_from_db()
    assert recording.stats == {"frames": 99}  # the heartbeat itself landed
    assert list(recording.files.values_list("name", "frames")) == [(FILE["name"], 10)]


def test_files_report_sends_opened_and_closed_files_at_once_and_growing_counts_every_period():
    report = FilesReport(every_s=10)
    one = [{**FILE, "frames": 1, "bytes": 100}]
    assert report.due(one, now=0.0)  # the first heartbeat always carries them
    assert not report.due([{**FILE, "frames": 30, "bytes": 900}], now=1.0)  # only counters grew
    assert report.due([{**FILE, "frames": 300, "bytes": 9000}], now=10.0)  # ... reported every 10 s
    closed = [{**FILE, "frames": 310, "bytes": 9100, "end_ms": 11000}]
    assert report.due(closed, now=11.0)  # a file closed: at once
    opened = closed + [{**FILE, "name": "tracks/u2-video-1.webm", "frames": 0, "bytes": 0}]
    assert report.due(opened, now=11.5)  # a file opened: at once
    assert not report.due(opened, now=12.0)


def test_a_dead_worker_is_replaced_and_the_gap_noted(cls, settings, django_capture_on_commit_callbacks):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    recording_claim(recording_id=recording.pk, worker="h:1")
    recording_heartbeat(recording_id=recording.pk, worker="h:1", stats={}, joined=True, files=[FILE])
    Recording.objects.filter(pk=recording.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.CLASSCAST_RECORDING_STALE_S + 1),
        started_at=timezone.now() - timedelta(seconds=30),
    )
    with django_capture_on_commit_callbacks() as callbacks:
        assert recordings_watchdog() == [recording.pk]
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.RESTARTING and recording.worker == ""
    assert not recording.complete and "interrupted" in recording.problems[0]
    assert recording.gaps[0]["end_ms"] is None and recording.gaps[0]["start_ms"] > 15000
    assert len(callbacks) == 2  # the job queued again, the class told
    assert recordings_watchdog() == []  # one restart per stale period
    # The new job picks it up: the gap closes, numbering of files continues in the job.
    again = recording_claim(recording_id=recording.pk, worker="h:9")
    assert again.attempts == 2 and again.gaps[0]["end_ms"] >= again.gaps[0]["start_ms"]
    assert SessionEvent.objects.filter(kind="recording.interrupted").count() == 1


def test_a_job_that_fails_while_wanted_is_queued_again(cls, django_capture_on_commit_callbacks):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    recording_claim(recording_id=recording.pk, worker="h:1")
    with django_capture_on_commit_callbacks():
        recording_finish(recording_id=recording.pk, worker="h:1", files=[FILE], error="StageConnectionError: gone")
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.RESTARTING and "gone" in recording.problems[0]


def test_session_end_stops_the_recording_and_dead_jobs_are_closed(cls, settings, django_capture_on_commit_callbacks):
    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    recording_claim(recording_id=recording.pk, worker="h:1")
    session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    recording.refresh_from_db()
    assert recording.stop_requested and recording.status == RecordingStatus.STARTING  # the live job finishes it
    Recording.objects.filter(pk=recording.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.CLASSCAST_RECORDING_STALE_S + 1))
    with django_capture_on_commit_callbacks():
        recordings_watchdog()
    recording.refresh_from_db()
    assert recording.status == RecordingStatus.PROCESSING and not recording.complete


def test_auto_record_starts_with_the_session(demo, django_capture_on_commit_callbacks):
    Classroom.objects.filter(pk=demo["class_id"]).update(auto_record=True)
    ada = actor_get(user=User.objects.get(username="ada"), classroom_id=demo["class_id"])
    session_start(classroom_id=demo["class_id"], actor=ada)
    recording = Recording.objects.get()
    assert recording.auto and recording.requested_by is None and recording.status == RecordingStatus.QUEUED


def test_timeline_events_become_offsets(cls):
    from classroom.services.chat import chat_post
    from classroom.services.hands import hand_raise
    from classroom.services.recording_processing import timeline_events

    recording = recording_start(classroom_id=cls.id, actor=cls.actor("ada"))
    recording_claim(recording_id=recording.pk, worker="h:1")
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    chat_post(classroom_id=cls.id, actor=cls.actor("ben"), text="hi")
    Recording.objects.filter(pk=recording.pk).update(stopped_at=timezone.now())
    recording.refresh_from_db()
    events = timeline_events(recording=recording)
    kinds = [e.kind for e in events]
    assert kinds == ["hand.raised", "chat.message"], kinds
    assert all(0 <= e.offset_ms < 5000 for e in events)
    assert events[0].actor.name == "Ben Okafor" and events[1].data == {"text": "hi"}
