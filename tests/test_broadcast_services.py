"""Going live, as services: who may, the job's claim and admission control, heartbeats and their
control answers, the watchdog, destinations, the stream key, and what the packager is told."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from classroom.errors import InvalidState, NotAllowed, NotFound
from classroom.models import Broadcast, BroadcastStatus, Classroom, Destination, SessionEvent
from classroom.selectors import actor_get
from classroom.services.broadcast import (
    broadcast_claim,
    broadcast_finish,
    broadcast_heartbeat,
    broadcast_layout_set,
    broadcast_start,
    broadcast_stop,
    broadcasts_watchdog,
    destination_add,
    destination_remove,
    program_cost,
    stream_key_rotate,
    studio_info,
)
from classroom.services.ingest import ingest_folder_for_key
from classroom.services.ladder import ladder_cost_pixels, ladder_parse
from classroom.services.sessions import session_end, session_start

User = get_user_model()
pytestmark = pytest.mark.usefixtures("fast_passwords")


@pytest.fixture
def cls(demo):
    class Cls:
        id = demo["class_id"]

        def actor(self, username):
            return actor_get(user=User.objects.get(username=username), classroom_id=self.id)

    c = Cls()
    session_start(classroom_id=c.id, actor=c.actor("ada"))
    return c


def test_program_cost_is_relative_to_720p30():
    assert program_cost(width=1280, height=720, fps=30) == 1.0
    assert program_cost(width=1920, height=1080, fps=30) == 2.25
    assert program_cost(width=640, height=360, fps=30) == 0.25
    # with a ladder: every video rung's pixels (720p + 360p = 1.25), the audio-only rung costs nothing here
    rungs = ladder_parse("720p,360p,audio", width=1280, height=720, fps=30, video_bitrate=2_500_000, audio_bitrate=128_000)
    assert program_cost(width=1280, height=720, fps=30, ladder_pixels_per_s=ladder_cost_pixels(rungs)) == 1.25


def test_only_the_instructor_goes_live_and_only_once(cls, django_capture_on_commit_callbacks):
    with pytest.raises(NotAllowed):
        broadcast_start(classroom_id=cls.id, actor=cls.actor("ben"))
    with django_capture_on_commit_callbacks() as callbacks:
        broadcast = broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    assert broadcast.status == BroadcastStatus.QUEUED and broadcast.cost_units == 1.312  # the default ladder: 720p + 360p + 180p pixels
    assert len(callbacks) == 2  # the class is told, and the job is queued
    with pytest.raises(InvalidState):
        broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    assert SessionEvent.objects.filter(kind="broadcast.started").count() == 1


def test_going_live_needs_a_live_class(demo):
    ada = actor_get(user=User.objects.get(username="ada"), classroom_id=demo["class_id"])
    with pytest.raises(InvalidState):
        broadcast_start(classroom_id=demo["class_id"], actor=ada)


def test_claim_heartbeat_and_stop(cls):
    broadcast = broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    claimed = broadcast_claim(broadcast_id=broadcast.pk, worker="host-a:1", capacity=2.0)
    assert claimed.status == BroadcastStatus.STARTING and claimed.attempts == 1
    # A duplicate delivery elsewhere does not run it twice.
    assert broadcast_claim(broadcast_id=broadcast.pk, worker="host-b:7", capacity=2.0) is None

    control = broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={"fps": 30.0}, live=True)
    assert control["stop"] is False and control["layout"] == "grid" and control["destinations"] == []
    broadcast.refresh_from_db()
    assert broadcast.status == BroadcastStatus.LIVE and broadcast.stats == {"fps": 30.0}
    assert SessionEvent.objects.filter(kind="broadcast.live").count() == 1

    broadcast_layout_set(classroom_id=cls.id, actor=cls.actor("ada"), layout="speaker")
    destination_add(classroom_id=cls.id, actor=cls.actor("ada"), name="YouTube", url="rtmp://a.example/live2/k")
    control = broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={}, live=True)
    assert control["layout"] == "speaker"
    assert [d["url"] for d in control["destinations"]] == ["rtmp://a.example/live2/k"]

    broadcast_stop(classroom_id=cls.id, actor=cls.actor("ada"))
    assert broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={}, live=True)["stop"] is True
    broadcast_finish(broadcast_id=broadcast.pk, worker="host-a:1")
    broadcast.refresh_from_db()
    assert broadcast.status == BroadcastStatus.STOPPED and broadcast.stopped_at is not None


def test_a_worker_without_room_refuses_and_says_why(cls, demo):
    busy = broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    broadcast_claim(broadcast_id=busy.pk, worker="host-a:1", capacity=2.0)
    other = Classroom.objects.create(title="Chemistry")
    other.memberships.create(user=User.objects.get(username="ada"), role="instructor")
    ada_other = actor_get(user=User.objects.get(username="ada"), classroom_id=other.pk)
    session_start(classroom_id=other.pk, actor=ada_other)
    second = broadcast_start(classroom_id=other.pk, actor=ada_other)
    assert broadcast_claim(broadcast_id=second.pk, worker="host-a:2", capacity=1.5) is None
    second.refresh_from_db()
    assert second.status == BroadcastStatus.REFUSED
    assert "No compositor capacity" in second.error and "1.312 of 1.5 units" in second.error
    # Another host has room.
    third = broadcast_start(classroom_id=other.pk, actor=ada_other)
    assert broadcast_claim(broadcast_id=third.pk, worker="host-b:1", capacity=1.5) is not None


def test_watchdog_restarts_a_job_whose_worker_died(cls, django_capture_on_commit_callbacks):
    broadcast = broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    broadcast_claim(broadcast_id=broadcast.pk, worker="host-a:1", capacity=2.0)
    broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={}, live=True)
    assert broadcasts_watchdog() == []  # alive
    Broadcast.objects.filter(pk=broadcast.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks() as callbacks:
        assert broadcasts_watchdog() == [broadcast.pk]
    assert len(callbacks) == 1  # queued again
    broadcast.refresh_from_db()
    assert broadcast.status == BroadcastStatus.RESTARTING and broadcast.worker == ""
    # The old worker, if it wakes up, is told to stop; the new one claims it.
    assert broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={}, live=True)["stop"] is True
    assert broadcast_claim(broadcast_id=broadcast.pk, worker="host-b:9", capacity=2.0).attempts == 2


def test_session_end_stops_the_job(cls):
    broadcast = broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    broadcast_claim(broadcast_id=broadcast.pk, worker="host-a:1", capacity=2.0)
    session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    control = broadcast_heartbeat(broadcast_id=broadcast.pk, worker="host-a:1", stats={}, live=True)
    assert control["stop"] is True and control["reason"] == "session ended"


def test_layout_rules(cls):
    broadcast_start(classroom_id=cls.id, actor=cls.actor("ada"))
    with pytest.raises(NotAllowed):
        broadcast_layout_set(classroom_id=cls.id, actor=cls.actor("ben"), layout="grid")
    with pytest.raises(InvalidState):
        broadcast_layout_set(classroom_id=cls.id, actor=cls.actor("ada"), layout="mosaic")
    with pytest.raises(InvalidState):  # ben is not on stage
        broadcast_layout_set(
            classroom_id=cls.id, actor=cls.actor("ada"), layout="single", focus_user_id=User.objects.get(username="ben").pk
        )
    ada_id = User.objects.get(username="ada").pk
    broadcast_layout_set(classroom_id=cls.id, actor=cls.actor("ada"), layout="single", focus_user_id=ada_id)
    assert Broadcast.objects.get().focus_user_id == ada_id


@pytest.mark.parametrize("url", ["http://x/live", "rtmp://", "file:///etc/passwd", "rtmp:/nohost", "rtmp://h/" + "a" * 600])
def test_destination_urls_are_checked(cls, url):
    with pytest.raises(InvalidState):
        destination_add(classroom_id=cls.id, actor=cls.actor("ada"), name="x", url=url)


def test_destinations_and_stream_key_are_the_instructors(cls):
    with pytest.raises(NotAllowed):
        destination_add(classroom_id=cls.id, actor=cls.actor("ben"), name="x", url="rtmp://h/app/k")
    dest = destination_add(classroom_id=cls.id, actor=cls.actor("ada"), name=" ", url=" rtmps://h:443/app/k ")
    assert dest.name == "RTMP" and dest.url == "rtmps://h:443/app/k"
    with pytest.raises(NotFound):
        destination_remove(classroom_id=cls.id, actor=cls.actor("ada"), destination_id=dest.pk + 100)
    destination_remove(classroom_id=cls.id, actor=cls.actor("ada"), destination_id=dest.pk)
    assert not Destination.objects.exists()

    old = Classroom.objects.get(pk=cls.id).stream_key
    with pytest.raises(NotAllowed):
        stream_key_rotate(classroom_id=cls.id, actor=cls.actor("ben"))
    new = stream_key_rotate(classroom_id=cls.id, actor=cls.actor("ada"))
    assert new != old and len(new) >= 32
    info = studio_info(classroom_id=cls.id)
    assert info["stream_key"] == new and info["publish_url"].endswith(f"/live/{new}")


def test_packager_folder_for_a_key(cls):
    classroom = Classroom.objects.get(pk=cls.id)
    session = classroom.sessions.get(status="live")
    assert ingest_folder_for_key("live", classroom.stream_key) == f"class-{cls.id}/session-{session.pk}"
    assert ingest_folder_for_key("live", "wrong-key") is None
    assert ingest_folder_for_key("other-app", classroom.stream_key) is None
    assert ingest_folder_for_key("live", "") is None
    session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    assert ingest_folder_for_key("live", classroom.stream_key) is None  # nothing live to publish into
