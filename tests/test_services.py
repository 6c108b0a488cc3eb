"""Services against the real database and channel layer: sessions, hands, the stage, muting, chat,
the event log and the class snapshot clients render from."""
from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any, Callable

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from classroom.signaling.messages import MAX_CHAT_CHARS
from classroom.errors import InvalidState, NotAllowed, NotFound
from classroom.models import (
    ChatMessage,
    Classroom,
    HandRaise,
    LiveSession,
    Presence,
    SessionEvent,
    SessionStatus,
    StageMembership,
    StageState,
)
from classroom.notify import class_group
from classroom.permissions import Actor
from classroom.selectors import actor_get, class_state
from classroom.services.chat import chat_post
from classroom.services.hands import hand_lower, hand_raise
from classroom.services.media import media_node_channel
from classroom.services.presence import presence_enter
from classroom.services.sessions import session_end, session_start
from classroom.services.stage import (
    stage_accept,
    stage_decline,
    stage_invite,
    stage_leave,
    stage_mute,
    stage_remove,
)

User = get_user_model()
RECEIVE_TIMEOUT_S = 10


class Listener:
    """A channel of our own on the real channel layer, optionally in the class's group."""

    def __init__(self, *, group: str | None = None, channel: str | None = None) -> None:
        self.layer = get_channel_layer()
        self.group = group
        self.channel = channel or f"test-listener.{uuid.uuid4().hex}"
        if group:
            async_to_sync(self.layer.group_add)(group, self.channel)

    def receive(self, match: Callable[[dict[str, Any]], bool] = lambda m: True) -> dict[str, Any]:
        async def next_matching() -> dict[str, Any]:
            while True:
                message = await asyncio.wait_for(self.layer.receive(self.channel), RECEIVE_TIMEOUT_S)
                if match(message):
                    return message

        return async_to_sync(next_matching)()

    def event(self, kind: str) -> dict[str, Any]:
        return self.receive(lambda m: m.get("type") == "classroom.event" and m["event"]["kind"] == kind)

    def close(self) -> None:
        if self.group:
            async_to_sync(self.layer.group_discard)(self.group, self.channel)


class ClassFixture:
    def __init__(self, demo: dict[str, Any]) -> None:
        self.id: int = demo["class_id"]
        self.users = {u.username: u for u in User.objects.filter(username__in=["ada", "ben", "cleo", "dev", "admin"])}

    def user(self, name: str) -> Any:
        return self.users[name]

    def uid(self, name: str) -> int:
        return self.users[name].pk

    def actor(self, name: str) -> Actor:
        return actor_get(user=self.users[name], classroom_id=self.id)

    def session(self) -> LiveSession:
        return LiveSession.objects.get(classroom_id=self.id, status=SessionStatus.LIVE)

    def events(self, session: LiveSession | None = None) -> list[tuple[str, int | None, int | None]]:
        rows = SessionEvent.objects.filter(session=session or self.session()).order_by("created_at", "id")
        return [(e.kind, e.actor_id, e.subject_id) for e in rows]

    def stage(self, name: str) -> StageMembership:
        return StageMembership.objects.filter(session__classroom_id=self.id, user=self.users[name]).latest("id")

    def start(self) -> LiveSession:
        return session_start(classroom_id=self.id, actor=self.actor("ada"))

    def on_stage(self, *names: str) -> None:
        for name in names:
            stage_invite(classroom_id=self.id, actor=self.actor("ada"), user_id=self.uid(name))
            stage_accept(classroom_id=self.id, actor=self.actor(name))


@pytest.fixture(autouse=True)
def fresh_channel_layer(settings) -> None:
    """A channel layer of this test's own (re-setting CHANNEL_LAYERS drops the cached one), so no
    per-event-loop state of a Redis layer carries over from another test."""
    settings.CHANNEL_LAYERS = copy.deepcopy(django_settings.CHANNEL_LAYERS)


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cls(demo) -> ClassFixture:
    return ClassFixture(demo)


@pytest.fixture
def listener(cls):
    listener = Listener(group=class_group(cls.id))
    yield listener
    listener.close()


@pytest.fixture
def live(cls) -> LiveSession:
    return cls.start()


def assert_refused(error_type: type, code: str, call: Callable[[], Any]) -> None:
    with pytest.raises(error_type) as info:
        call()
    assert info.value.code == code
    assert info.value.message


# --- actors ---------------------------------------------------------------------------------------------------

def test_actor_get_reads_the_membership_role(cls):
    assert cls.actor("ada") == Actor(user_id=cls.uid("ada"), is_staff=False, role="instructor")
    assert cls.actor("ben") == Actor(user_id=cls.uid("ben"), is_staff=False, role="student")
    assert cls.actor("admin") == Actor(user_id=cls.uid("admin"), is_staff=True, role=None)
    other = Classroom.objects.create(title="Other")
    assert actor_get(user=cls.user("ada"), classroom_id=other.pk).role is None


# --- sessions -------------------------------------------------------------------------------------------------

def test_instructor_starts_a_session_and_is_on_stage(cls, listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        session = session_start(classroom_id=cls.id, actor=cls.actor("ada"))
    assert len(callbacks) == 1

    session.refresh_from_db()
    assert session.status == SessionStatus.LIVE
    assert session.started_at is not None and session.ended_at is None
    assert session.started_by_id == cls.uid("ada")
    ada = cls.stage("ada")
    assert (ada.session_id, ada.state, ada.joined_at) == (session.pk, StageState.ON_STAGE, session.started_at)
    assert not ada.audio_muted and not ada.video_muted
    assert cls.events() == [("session.started", cls.uid("ada"), None)]

    message = listener.event("session.started")
    assert message["event"]["actor_id"] == cls.uid("ada")
    assert message["event"]["subject_id"] is None
    assert message["event"]["data"] == {}
    assert message["state"]["session"] == {
        "id": session.pk,
        "status": "live",
        "started_at": session.started_at.isoformat(),
    }
    assert [(p["user_id"], p["role"], p["state"]) for p in message["state"]["stage"]] == [
        (cls.uid("ada"), "instructor", "on_stage")
    ]


@pytest.mark.parametrize("name", ["ben", "cleo"])
def test_students_cannot_start_or_end_a_session(cls, name, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        assert_refused(NotAllowed, "forbidden", lambda: session_start(classroom_id=cls.id, actor=cls.actor(name)))
    assert not LiveSession.objects.exists()
    assert not SessionEvent.objects.exists()
    assert callbacks == []

    cls.start()
    with django_capture_on_commit_callbacks() as callbacks:
        assert_refused(NotAllowed, "forbidden", lambda: session_end(classroom_id=cls.id, actor=cls.actor(name)))
    assert cls.session().status == SessionStatus.LIVE
    assert callbacks == []


def test_non_member_cannot_start_a_session(cls):
    outsider = User.objects.create_user("eve", password="x")
    actor = actor_get(user=outsider, classroom_id=cls.id)
    assert_refused(NotAllowed, "forbidden", lambda: session_start(classroom_id=cls.id, actor=actor))


def test_staff_starts_and_ends_a_session_without_going_on_stage(cls, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        session = session_start(classroom_id=cls.id, actor=cls.actor("admin"))
    assert session.started_by_id == cls.uid("admin")
    assert not StageMembership.objects.filter(session=session).exists()
    with django_capture_on_commit_callbacks(execute=True):
        session_end(classroom_id=cls.id, actor=cls.actor("admin"))
    session.refresh_from_db()
    assert session.status == SessionStatus.ENDED
    assert cls.events(session) == [
        ("session.started", cls.uid("admin"), None),
        ("session.ended", cls.uid("admin"), None),
    ]


def test_only_one_live_session_per_class(cls, live, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        assert_refused(InvalidState, "invalid_state", cls.start)
        assert_refused(InvalidState, "invalid_state", lambda: session_start(classroom_id=cls.id, actor=cls.actor("admin")))
    assert callbacks == []
    assert LiveSession.objects.filter(classroom_id=cls.id).count() == 1
    # and the database itself refuses a second live row
    with pytest.raises(IntegrityError), transaction.atomic():
        LiveSession.objects.create(classroom_id=cls.id, status=SessionStatus.LIVE)


def test_another_class_can_be_live_at_the_same_time(cls, live):
    other = Classroom.objects.create(title="Other")
    session = session_start(classroom_id=other.pk, actor=Actor(user_id=cls.uid("admin"), is_staff=True))
    assert session.pk != live.pk
    assert LiveSession.objects.filter(status=SessionStatus.LIVE).count() == 2


def test_start_takes_the_scheduled_session(cls):
    scheduled = LiveSession.objects.create(classroom_id=cls.id, status=SessionStatus.SCHEDULED)
    session = cls.start()
    assert session.pk == scheduled.pk
    scheduled.refresh_from_db()
    assert scheduled.status == SessionStatus.LIVE


def test_instructor_ends_a_session(cls, listener, django_capture_on_commit_callbacks):
    live = cls.start()
    cls.on_stage("ben")
    stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("cleo"))
    hand_raise(classroom_id=cls.id, actor=cls.actor("dev"))

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        ended = session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    assert len(callbacks) == 1  # no media node pinned: nothing to tell one

    live.refresh_from_db()
    assert ended.pk == live.pk
    assert live.status == SessionStatus.ENDED
    assert live.ended_at is not None and live.ended_at >= live.started_at
    states = dict(StageMembership.objects.filter(session=live).values_list("user__username", "state"))
    assert states == {"ada": "left", "ben": "left", "cleo": "left"}
    assert not StageMembership.objects.filter(session=live, left_at__isnull=True).exists()
    assert not HandRaise.objects.filter(session=live, lowered_at__isnull=True).exists()
    assert cls.events(live)[-1] == ("session.ended", cls.uid("ada"), None)

    message = listener.event("session.ended")
    assert message["state"] == {"session": None, "stage": [], "hands": [], "participants": [], "broadcast": None, "recording": None}

    # nothing is live any more; a new session can start
    assert_refused(InvalidState, "invalid_state", lambda: session_end(classroom_id=cls.id, actor=cls.actor("ada")))
    again = cls.start()
    assert again.pk != live.pk
    assert cls.stage("ada").session_id == again.pk


def test_ending_a_session_tells_its_media_node(cls, live, django_capture_on_commit_callbacks):
    node_id = f"unit-{uuid.uuid4().hex[:12]}"
    LiveSession.objects.filter(pk=live.pk).update(media_node=node_id)
    node = Listener(channel=media_node_channel(node_id))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    assert len(callbacks) == 2
    assert node.receive() == {"type": "media.end", "session_id": live.pk, "reason": "session_ended"}


def test_actions_need_a_live_session(cls):
    ada, ben = cls.actor("ada"), cls.actor("ben")
    calls = [
        lambda: session_end(classroom_id=cls.id, actor=ada),
        lambda: hand_raise(classroom_id=cls.id, actor=ben),
        lambda: hand_lower(classroom_id=cls.id, actor=ben),
        lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=ben.user_id),
        lambda: stage_accept(classroom_id=cls.id, actor=ben),
        lambda: stage_decline(classroom_id=cls.id, actor=ben),
        lambda: stage_leave(classroom_id=cls.id, actor=ben),
        lambda: stage_remove(classroom_id=cls.id, actor=ada, user_id=ben.user_id),
        lambda: stage_mute(classroom_id=cls.id, actor=ben, kind="audio", muted=True),
        lambda: chat_post(classroom_id=cls.id, actor=ben, text="hello"),
    ]
    for call in calls:
        assert_refused(InvalidState, "invalid_state", call)
    assert not SessionEvent.objects.exists()
    assert not ChatMessage.objects.exists()


# --- hands ----------------------------------------------------------------------------------------------------

def test_student_raises_a_hand_once(cls, live, listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        hand = hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    assert len(callbacks) == 1
    assert (hand.session_id, hand.user_id, hand.lowered_at) == (live.pk, cls.uid("ben"), None)
    assert cls.events()[-1] == ("hand.raised", cls.uid("ben"), cls.uid("ben"))
    message = listener.event("hand.raised")
    assert [h["user_id"] for h in message["state"]["hands"]] == [cls.uid("ben")]
    assert message["state"]["hands"][0]["name"] == "Ben Okafor"

    with django_capture_on_commit_callbacks() as callbacks:
        assert_refused(InvalidState, "invalid_state", lambda: hand_raise(classroom_id=cls.id, actor=cls.actor("ben")))
    assert callbacks == []
    assert HandRaise.objects.filter(user=cls.user("ben")).count() == 1


@pytest.mark.parametrize("name", ["ada", "admin"])
def test_only_students_raise_hands(cls, live, name):
    assert_refused(NotAllowed, "forbidden", lambda: hand_raise(classroom_id=cls.id, actor=cls.actor(name)))
    assert not HandRaise.objects.exists()


def test_student_on_stage_cannot_raise_a_hand(cls, live):
    cls.on_stage("ben")
    assert_refused(InvalidState, "invalid_state", lambda: hand_raise(classroom_id=cls.id, actor=cls.actor("ben")))


def test_student_lowers_own_hand_and_may_raise_it_again(cls, live, listener, django_capture_on_commit_callbacks):
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        hand_lower(classroom_id=cls.id, actor=cls.actor("ben"))
    assert len(callbacks) == 1
    assert HandRaise.objects.get(user=cls.user("ben")).lowered_at is not None
    assert cls.events()[-1] == ("hand.lowered", cls.uid("ben"), cls.uid("ben"))
    assert listener.event("hand.lowered")["state"]["hands"] == []

    assert_refused(InvalidState, "invalid_state", lambda: hand_lower(classroom_id=cls.id, actor=cls.actor("ben")))
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    assert HandRaise.objects.filter(user=cls.user("ben")).count() == 2
    assert HandRaise.objects.filter(user=cls.user("ben"), lowered_at__isnull=True).count() == 1


def test_instructor_lowers_anyones_hand(cls, live):
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    hand_raise(classroom_id=cls.id, actor=cls.actor("cleo"))
    hand_lower(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"))
    assert list(HandRaise.objects.filter(lowered_at__isnull=True).values_list("user__username", flat=True)) == ["cleo"]
    assert cls.events()[-1] == ("hand.lowered", cls.uid("ada"), cls.uid("ben"))
    hand_lower(classroom_id=cls.id, actor=cls.actor("admin"), user_id=cls.uid("cleo"))
    assert not HandRaise.objects.filter(lowered_at__isnull=True).exists()


def test_student_cannot_lower_someone_elses_hand(cls, live, django_capture_on_commit_callbacks):
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    with django_capture_on_commit_callbacks() as callbacks:
        assert_refused(
            NotAllowed, "forbidden", lambda: hand_lower(classroom_id=cls.id, actor=cls.actor("cleo"), user_id=cls.uid("ben"))
        )
    assert callbacks == []
    assert HandRaise.objects.get(user=cls.user("ben")).lowered_at is None
    assert [kind for kind, *_ in cls.events()] == ["session.started", "hand.raised"]


# --- the stage ------------------------------------------------------------------------------------------------

def test_invite_and_accept(cls, live, listener, django_capture_on_commit_callbacks):
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        invited = stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"))
    assert len(callbacks) == 1
    assert (invited.state, invited.joined_at) == (StageState.INVITED, None)
    assert invited.invited_at is not None
    message = listener.event("stage.invited")
    assert message["event"]["subject_id"] == cls.uid("ben")
    assert [(p["user_id"], p["state"]) for p in message["state"]["stage"]] == [
        (cls.uid("ada"), "on_stage"),
        (cls.uid("ben"), "invited"),
    ]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        accepted = stage_accept(classroom_id=cls.id, actor=cls.actor("ben"))
    assert len(callbacks) == 1
    assert accepted.pk == invited.pk
    accepted.refresh_from_db()
    assert accepted.state == StageState.ON_STAGE
    assert accepted.joined_at is not None
    # going on stage lowers the hand
    assert not HandRaise.objects.filter(user=cls.user("ben"), lowered_at__isnull=True).exists()
    message = listener.event("stage.joined")
    assert message["state"]["hands"] == []
    assert [(p["user_id"], p["state"]) for p in message["state"]["stage"]] == [
        (cls.uid("ada"), "on_stage"),
        (cls.uid("ben"), "on_stage"),
    ]
    assert cls.events()[-2:] == [
        ("stage.invited", cls.uid("ada"), cls.uid("ben")),
        ("stage.joined", cls.uid("ben"), cls.uid("ben")),
    ]
    assert_refused(InvalidState, "invalid_state", lambda: stage_accept(classroom_id=cls.id, actor=cls.actor("ben")))


def test_students_cannot_manage_the_stage(cls, live):
    cls.on_stage("cleo")
    ben = cls.actor("ben")
    assert_refused(NotAllowed, "forbidden", lambda: stage_invite(classroom_id=cls.id, actor=ben, user_id=cls.uid("dev")))
    assert_refused(NotAllowed, "forbidden", lambda: stage_invite(classroom_id=cls.id, actor=ben, user_id=ben.user_id))
    assert_refused(NotAllowed, "forbidden", lambda: stage_remove(classroom_id=cls.id, actor=ben, user_id=cls.uid("cleo")))
    # even a student on stage cannot take others off
    cleo = cls.actor("cleo")
    assert_refused(NotAllowed, "forbidden", lambda: stage_remove(classroom_id=cls.id, actor=cleo, user_id=cls.uid("ada")))
    assert cls.stage("cleo").state == StageState.ON_STAGE
    assert cls.stage("ada").state == StageState.ON_STAGE
    assert not StageMembership.objects.filter(user__username__in=["ben", "dev"]).exists()


def test_invite_checks_membership_and_duplicates(cls, live):
    ada = cls.actor("ada")
    outsider = User.objects.create_user("eve", password="x")
    assert_refused(NotFound, "not_found", lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=outsider.pk))
    assert_refused(NotFound, "not_found", lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("admin")))
    assert_refused(InvalidState, "invalid_state", lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=ada.user_id))
    stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("ben"))
    assert_refused(InvalidState, "invalid_state", lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("ben")))
    assert StageMembership.objects.filter(user=cls.user("ben")).count() == 1


def test_accept_or_decline_needs_an_invitation(cls, live):
    assert_refused(InvalidState, "invalid_state", lambda: stage_accept(classroom_id=cls.id, actor=cls.actor("ben")))
    assert_refused(InvalidState, "invalid_state", lambda: stage_decline(classroom_id=cls.id, actor=cls.actor("ben")))
    # the instructor is on stage, not invited
    assert_refused(InvalidState, "invalid_state", lambda: stage_accept(classroom_id=cls.id, actor=cls.actor("ada")))


def test_decline(cls, live, listener, django_capture_on_commit_callbacks):
    stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("cleo"))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stage_decline(classroom_id=cls.id, actor=cls.actor("cleo"))
    assert len(callbacks) == 1
    member = cls.stage("cleo")
    assert member.state == StageState.DECLINED and member.left_at is not None and member.joined_at is None
    assert cls.events()[-1] == ("stage.declined", cls.uid("cleo"), cls.uid("cleo"))
    assert [p["user_id"] for p in listener.event("stage.declined")["state"]["stage"]] == [cls.uid("ada")]
    assert_refused(InvalidState, "invalid_state", lambda: stage_decline(classroom_id=cls.id, actor=cls.actor("cleo")))
    assert_refused(InvalidState, "invalid_state", lambda: stage_accept(classroom_id=cls.id, actor=cls.actor("cleo")))
    # a new invitation after declining
    again = stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("cleo"))
    assert again.pk != member.pk and again.state == StageState.INVITED


def test_leave(cls, live, listener, django_capture_on_commit_callbacks):
    cls.on_stage("ben")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stage_leave(classroom_id=cls.id, actor=cls.actor("ben"))
    assert len(callbacks) == 1  # no media node pinned yet
    member = cls.stage("ben")
    assert member.state == StageState.LEFT and member.left_at is not None
    assert cls.events()[-1] == ("stage.left", cls.uid("ben"), cls.uid("ben"))
    assert [p["user_id"] for p in listener.event("stage.left")["state"]["stage"]] == [cls.uid("ada")]
    assert_refused(InvalidState, "invalid_state", lambda: stage_leave(classroom_id=cls.id, actor=cls.actor("ben")))
    assert_refused(InvalidState, "invalid_state", lambda: stage_leave(classroom_id=cls.id, actor=cls.actor("cleo")))
    # and back again by a new invitation
    cls.on_stage("ben")
    assert cls.stage("ben").state == StageState.ON_STAGE


def test_leaving_the_stage_disconnects_media(cls, live, django_capture_on_commit_callbacks):
    node_id = f"unit-{uuid.uuid4().hex[:12]}"
    LiveSession.objects.filter(pk=live.pk).update(media_node=node_id)
    node = Listener(channel=media_node_channel(node_id))
    cls.on_stage("ben")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stage_leave(classroom_id=cls.id, actor=cls.actor("ben"))
    assert len(callbacks) == 2
    assert node.receive() == {"type": "media.kick", "session_id": live.pk, "user_id": cls.uid("ben"), "reason": "left"}


def test_a_mute_reaches_the_media_node_which_enforces_it(cls, live, django_capture_on_commit_callbacks):
    node_id = f"unit-{uuid.uuid4().hex[:12]}"
    LiveSession.objects.filter(pk=live.pk).update(media_node=node_id)
    node = Listener(channel=media_node_channel(node_id))
    cls.on_stage("ben")
    with django_capture_on_commit_callbacks(execute=True):
        stage_mute(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"), kind="audio", muted=True)
    assert node.receive() == {
        "type": "media.mute", "session_id": live.pk, "user_id": cls.uid("ben"), "kind": "audio", "muted": True,
    }


def test_instructor_removes_someone_from_stage(cls, live, listener, django_capture_on_commit_callbacks):
    node_id = f"unit-{uuid.uuid4().hex[:12]}"
    LiveSession.objects.filter(pk=live.pk).update(media_node=node_id)
    node = Listener(channel=media_node_channel(node_id))
    cls.on_stage("ben")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stage_remove(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"))
    assert len(callbacks) == 2
    member = cls.stage("ben")
    assert member.state == StageState.REMOVED and member.left_at is not None
    assert cls.events()[-1] == ("stage.removed", cls.uid("ada"), cls.uid("ben"))
    assert [p["user_id"] for p in listener.event("stage.removed")["state"]["stage"]] == [cls.uid("ada")]
    assert node.receive() == {"type": "media.kick", "session_id": live.pk, "user_id": cls.uid("ben"), "reason": "removed"}
    assert_refused(
        InvalidState, "invalid_state", lambda: stage_remove(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"))
    )
    assert_refused(
        InvalidState, "invalid_state", lambda: stage_remove(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("dev"))
    )


def test_instructor_withdraws_an_invitation(cls, live):
    stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("dev"))
    stage_remove(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("dev"))
    assert cls.stage("dev").state == StageState.REMOVED
    assert_refused(InvalidState, "invalid_state", lambda: stage_accept(classroom_id=cls.id, actor=cls.actor("dev")))


def test_stage_limit_counts_invited_and_on_stage(cls, live, settings):
    settings.CLASSCAST_STAGE_LIMIT = 3
    ada = cls.actor("ada")
    cls.on_stage("ben")  # ada + ben
    stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("cleo"))  # + cleo invited = 3
    with pytest.raises(InvalidState) as info:
        stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("dev"))
    assert "3" in info.value.message
    assert not StageMembership.objects.filter(user=cls.user("dev")).exists()
    # a declined invitation frees its place
    stage_decline(classroom_id=cls.id, actor=cls.actor("cleo"))
    assert stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("dev")).state == StageState.INVITED
    # and so does leaving
    assert_refused(InvalidState, "invalid_state", lambda: stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("cleo")))
    stage_leave(classroom_id=cls.id, actor=cls.actor("ben"))
    stage_invite(classroom_id=cls.id, actor=ada, user_id=cls.uid("cleo"))


def test_default_stage_limit_is_enforced(cls, live, settings):
    limit = settings.CLASSCAST_STAGE_LIMIT
    for i in range(limit - 1):  # the instructor holds one place
        student = User.objects.create_user(f"student{i}", password="x")
        cls.users[student.username] = student
        student.memberships.create(classroom_id=cls.id, role="student")
        stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=student.pk)
    assert_refused(InvalidState, "invalid_state", lambda: stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben")))


# --- muting ---------------------------------------------------------------------------------------------------

def test_participant_mutes_and_unmutes_themself(cls, live, listener, django_capture_on_commit_callbacks):
    cls.on_stage("ben")
    ben = cls.actor("ben")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stage_mute(classroom_id=cls.id, actor=ben, kind="audio", muted=True)
    assert len(callbacks) == 1
    member = cls.stage("ben")
    assert (member.audio_muted, member.video_muted) == (True, False)
    event = SessionEvent.objects.filter(kind="stage.muted").latest("id")
    assert (event.actor_id, event.subject_id, event.data) == (ben.user_id, ben.user_id, {"kind": "audio", "muted": True})
    message = listener.event("stage.muted")
    assert message["event"]["data"] == {"kind": "audio", "muted": True}
    (ben_row,) = [p for p in message["state"]["stage"] if p["user_id"] == ben.user_id]
    assert (ben_row["audio_muted"], ben_row["video_muted"]) == (True, False)

    stage_mute(classroom_id=cls.id, actor=ben, kind="video", muted=True)
    stage_mute(classroom_id=cls.id, actor=ben, kind="audio", muted=False, user_id=ben.user_id)
    member.refresh_from_db()
    assert (member.audio_muted, member.video_muted) == (False, True)
    assert SessionEvent.objects.filter(kind="stage.muted").count() == 3


def test_instructor_mutes_others_but_cannot_unmute_them(cls, live):
    cls.on_stage("ben")
    ada = cls.actor("ada")
    stage_mute(classroom_id=cls.id, actor=ada, kind="video", muted=True, user_id=cls.uid("ben"))
    assert cls.stage("ben").video_muted is True
    event = SessionEvent.objects.filter(kind="stage.muted").latest("id")
    assert (event.actor_id, event.subject_id, event.data) == (ada.user_id, cls.uid("ben"), {"kind": "video", "muted": True})

    for actor in (ada, cls.actor("admin")):
        assert_refused(
            NotAllowed,
            "forbidden",
            lambda: stage_mute(classroom_id=cls.id, actor=actor, kind="video", muted=False, user_id=cls.uid("ben")),
        )
    assert cls.stage("ben").video_muted is True
    # only ben switches his camera back on
    stage_mute(classroom_id=cls.id, actor=cls.actor("ben"), kind="video", muted=False)
    assert cls.stage("ben").video_muted is False
    # the instructor mutes and unmutes themself
    stage_mute(classroom_id=cls.id, actor=ada, kind="audio", muted=True)
    stage_mute(classroom_id=cls.id, actor=ada, kind="audio", muted=False, user_id=ada.user_id)
    assert cls.stage("ada").audio_muted is False


def test_student_cannot_mute_others(cls, live):
    cls.on_stage("ben", "cleo")
    for target in ("ben", "ada"):
        assert_refused(
            NotAllowed,
            "forbidden",
            lambda: stage_mute(classroom_id=cls.id, actor=cls.actor("cleo"), kind="audio", muted=True, user_id=cls.uid(target)),
        )
        assert cls.stage(target).audio_muted is False
    assert not SessionEvent.objects.filter(kind="stage.muted").exists()


def test_mute_needs_the_person_on_stage(cls, live):
    stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cls.uid("ben"))
    assert_refused(InvalidState, "invalid_state", lambda: stage_mute(classroom_id=cls.id, actor=cls.actor("ben"), kind="audio", muted=True))
    assert_refused(
        InvalidState,
        "invalid_state",
        lambda: stage_mute(classroom_id=cls.id, actor=cls.actor("ada"), kind="audio", muted=True, user_id=cls.uid("cleo")),
    )
    assert_refused(InvalidState, "invalid_state", lambda: stage_mute(classroom_id=cls.id, actor=cls.actor("dev"), kind="video", muted=True))


# --- chat -----------------------------------------------------------------------------------------------------

def test_chat_post(cls, live, listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        message = chat_post(classroom_id=cls.id, actor=cls.actor("ben"), text="  Hello, class!\n")
    assert len(callbacks) == 1
    assert (message.session_id, message.author_id, message.text) == (live.pk, cls.uid("ben"), "Hello, class!")
    assert ChatMessage.objects.get().text == "Hello, class!"
    event = SessionEvent.objects.get(kind="chat.message")
    assert (event.actor_id, event.subject_id, event.data) == (cls.uid("ben"), None, {"message_id": message.pk})

    broadcast = listener.receive(lambda m: m.get("type") == "classroom.chat")
    assert broadcast["message"] == {
        "id": message.pk,
        "user_id": cls.uid("ben"),
        "name": "Ben Okafor",
        "text": "Hello, class!",
        "at": message.created_at.isoformat(),
    }


def test_chat_refuses_empty_and_too_long_text(cls, live, django_capture_on_commit_callbacks):
    ben = cls.actor("ben")
    limit = MAX_CHAT_CHARS  # the protocol's limit is the service's
    with django_capture_on_commit_callbacks() as callbacks:
        for text in ("", "   ", "\n\t ", "x" * (limit + 1)):
            assert_refused(InvalidState, "invalid_state", lambda: chat_post(classroom_id=cls.id, actor=ben, text=text))
    assert callbacks == []
    assert not ChatMessage.objects.exists()
    assert not SessionEvent.objects.filter(kind="chat.message").exists()
    # the limit applies after stripping, and is inclusive
    assert chat_post(classroom_id=cls.id, actor=ben, text="  " + "y" * limit + "  ").text == "y" * limit


def test_chat_is_for_members_and_staff(cls, live):
    outsider = User.objects.create_user("eve", password="x")
    actor = actor_get(user=outsider, classroom_id=cls.id)
    assert_refused(NotAllowed, "forbidden", lambda: chat_post(classroom_id=cls.id, actor=actor, text="hi"))
    assert chat_post(classroom_id=cls.id, actor=cls.actor("admin"), text="hi from staff").author_id == cls.uid("admin")
    assert chat_post(classroom_id=cls.id, actor=cls.actor("ada"), text="hi").author_id == cls.uid("ada")
    assert list(ChatMessage.objects.values_list("text", flat=True)) == ["hi from staff", "hi"]


# --- the event log and the snapshot -------------------------------------------------------------------------------

def test_every_change_is_logged_in_order(cls):
    ada, ben, cleo = cls.actor("ada"), cls.actor("ben"), cls.actor("cleo")
    live = session_start(classroom_id=cls.id, actor=ada)
    hand_raise(classroom_id=cls.id, actor=ben)
    hand_raise(classroom_id=cls.id, actor=cleo)
    hand_lower(classroom_id=cls.id, actor=cleo)
    stage_invite(classroom_id=cls.id, actor=ada, user_id=ben.user_id)
    stage_accept(classroom_id=cls.id, actor=ben)
    stage_mute(classroom_id=cls.id, actor=ada, kind="audio", muted=True, user_id=ben.user_id)
    chat_post(classroom_id=cls.id, actor=ben, text="thanks")
    stage_invite(classroom_id=cls.id, actor=ada, user_id=cleo.user_id)
    stage_decline(classroom_id=cls.id, actor=cleo)
    stage_remove(classroom_id=cls.id, actor=ada, user_id=ben.user_id)
    stage_invite(classroom_id=cls.id, actor=ada, user_id=cleo.user_id)
    stage_accept(classroom_id=cls.id, actor=cleo)
    stage_leave(classroom_id=cls.id, actor=cleo)
    session_end(classroom_id=cls.id, actor=ada)
    a, b, c = ada.user_id, ben.user_id, cleo.user_id
    assert cls.events(live) == [
        ("session.started", a, None),
        ("hand.raised", b, b),
        ("hand.raised", c, c),
        ("hand.lowered", c, c),
        ("stage.invited", a, b),
        ("stage.joined", b, b),
        ("stage.muted", a, b),
        ("chat.message", b, None),
        ("stage.invited", a, c),
        ("stage.declined", c, c),
        ("stage.removed", a, b),
        ("stage.invited", a, c),
        ("stage.joined", c, c),
        ("stage.left", c, c),
        ("session.ended", a, None),
    ]


def test_class_state_without_a_session(cls):
    assert class_state(classroom_id=cls.id) == {"session": None, "stage": [], "hands": [], "participants": [], "broadcast": None, "recording": None}


def test_class_state_snapshot(cls):
    channel = iter(f"test-socket.{i}" for i in range(100))
    presence_enter(classroom_id=cls.id, user_id=cls.uid("ada"), channel_name=next(channel), page="console")
    presence_enter(classroom_id=cls.id, user_id=cls.uid("ben"), channel_name=next(channel), page="class")
    presence_enter(classroom_id=cls.id, user_id=cls.uid("ben"), channel_name=next(channel), page="watch")
    presence_enter(classroom_id=cls.id, user_id=cls.uid("ben"), channel_name=next(channel), page="class")
    presence_enter(classroom_id=cls.id, user_id=cls.uid("admin"), channel_name=next(channel), page="watch")
    presence_enter(classroom_id=cls.id, user_id=None, channel_name=next(channel), page="service", hidden=True)
    presence_enter(classroom_id=cls.id, user_id=cls.uid("cleo"), channel_name=next(channel), page="class", hidden=True)
    other = Classroom.objects.create(title="Other")
    presence_enter(classroom_id=other.pk, user_id=cls.uid("dev"), channel_name=next(channel), page="class")

    live = cls.start()
    ada, ben, cleo, dev = (cls.uid(n) for n in ("ada", "ben", "cleo", "dev"))
    hand_raise(classroom_id=cls.id, actor=cls.actor("ben"))
    hand_raise(classroom_id=cls.id, actor=cls.actor("dev"))
    stage_invite(classroom_id=cls.id, actor=cls.actor("ada"), user_id=cleo)
    cls.on_stage("dev")
    stage_mute(classroom_id=cls.id, actor=cls.actor("dev"), kind="video", muted=True)

    state = class_state(classroom_id=cls.id)
    live.refresh_from_db()
    ben_hand = HandRaise.objects.get(user_id=ben)
    since = {m.user_id: m.joined_at.isoformat() if m.joined_at else None for m in StageMembership.objects.filter(session=live)}
    assert state == {
        "session": {"id": live.pk, "status": "live", "started_at": live.started_at.isoformat()},
        "stage": [
            {"user_id": ada, "name": "Ada Lovelace", "role": "instructor", "state": "on_stage",
             "since": since[ada], "audio_muted": False, "video_muted": False},
            {"user_id": cleo, "name": "Cleo Martins", "role": "student", "state": "invited",
             "since": None, "audio_muted": False, "video_muted": False},
            {"user_id": dev, "name": "Dev Sharma", "role": "student", "state": "on_stage",
             "since": since[dev], "audio_muted": False, "video_muted": True},
        ],
        "hands": [
            {"user_id": ben, "name": "Ben Okafor", "role": "student", "raised_at": ben_hand.raised_at.isoformat()},
        ],
        "participants": [
            {"user_id": ada, "name": "Ada Lovelace", "role": "instructor", "pages": ["console"]},
            {"user_id": ben, "name": "Ben Okafor", "role": "student", "pages": ["class", "watch"]},
            {"user_id": cls.uid("admin"), "name": "Site Admin", "role": "staff", "pages": ["watch"]},
        ],
        "broadcast": None,
        "recording": None,
    }
    assert Presence.objects.filter(classroom_id=cls.id).count() == 7


def test_class_state_forgets_what_ended(cls):
    cls.start()
    cls.on_stage("ben")
    hand_raise(classroom_id=cls.id, actor=cls.actor("cleo"))
    stage_leave(classroom_id=cls.id, actor=cls.actor("ben"))
    state = class_state(classroom_id=cls.id)
    assert [p["user_id"] for p in state["stage"]] == [cls.uid("ada")]
    assert [h["user_id"] for h in state["hands"]] == [cls.uid("cleo")]
    session_end(classroom_id=cls.id, actor=cls.actor("ada"))
    assert class_state(classroom_id=cls.id)["session"] is None
